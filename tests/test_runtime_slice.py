"""Slice bounds computed at run time from shapes (TorchScript's torch.chunk: Shape -> Gather -> Add(1) ->
Div(2) -> Mul(j)). The pruned graph keeps the computation, so it must produce the bounds of the pruned
channels: the analysis ties the pieces to equal kept counts when the arithmetic follows the channel count
and freezes otherwise. The oracle is the masked reference (pruned == masked for random selections)."""
import numpy as np
import onnx
from helpers import oracle_error, rel_err, run
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import Analysis
from onnxprune.rewrite import Rewriter
from onnxprune.selection import Selection


def _conv(name, x, cout, cin, rng, k=1):
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, k, k)).astype(np.float32), f"{name}_w")
    b = numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}_b")
    node = helper.make_node("Conv", [x, w.name, b.name], [name], name=name, pads=[k // 2] * 4)
    return node, [w, b]


def _int(name, *values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _finish(nodes, inits, x, cin, rng, name):
    """conv3 (`cin` -> 5) on `x`, added to conv4: the checked model with input x [N,3,6,6], output y."""
    n, w = _conv("conv3", x, 5, cin, rng)
    nodes.append(n)
    inits += w
    nodes.append(helper.make_node("Add", ["conv3", "conv4"], ["y"], name="out_add"))
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def chunk_model(c=8, add=1, div=2, mul_end=2, shape_of="r1", c0=6):
    """x -> conv1 (c) -> relu r1 -> two run-time Slices of r1's channels -> conv2 on piece 2 -> concat ->
    conv3, plus x -> conv0 (c0) -> conv4, added to conv3. The bounds: e1 = (C + add) / div, e2 = e1 *
    mul_end, pieces [0, e1) and [e1, e2), C = channel count of `shape_of` (r1 or conv0)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], [_int("one", 1), _int("add", add), _int("div", div), _int("m2", mul_end),
                        _int("zero", 0), _int("axes", 1), _int("gidx", 1)]
    for name, x, cout, cin, k in (("conv1", "x", c, 3, 3), ("conv0", "x", c0, 3, 3), ("conv4", "conv0", 5, c0, 1)):
        n, w = _conv(name, x, cout, cin, rng, k)
        nodes.append(n)
        inits += w
    size = c if shape_of == "r1" else c0
    e1 = min(max((size + add) // div, 0), c)
    e2 = min(max(e1 * mul_end, e1), c)
    nodes += [helper.make_node("Relu", ["conv1"], ["r1"], name="relu1"),
              helper.make_node("Shape", [shape_of], ["shp"], name="shape"),
              helper.make_node("Gather", ["shp", "gidx"], ["dim"], name="gather", axis=0),
              helper.make_node("Add", ["dim", "add"], ["dim1"], name="add"),
              helper.make_node("Div", ["dim1", "div"], ["half"], name="div"),
              helper.make_node("Mul", ["half", "one"], ["e1"], name="mul1"),
              helper.make_node("Mul", ["half", "m2"], ["e2"], name="mul2"),
              helper.make_node("Slice", ["r1", "zero", "e1", "axes"], ["p1"], name="slice1"),
              helper.make_node("Slice", ["r1", "e1", "e2", "axes"], ["p2"], name="slice2")]
    n, w = _conv("conv2", "p2", e2 - e1, e2 - e1, rng)
    nodes.append(n)
    inits += w
    nodes += [helper.make_node("Relu", ["conv2"], ["r2"], name="relu2"),
              helper.make_node("Concat", ["p1", "r2"], ["cat"], name="cat", axis=1)]
    return _finish(nodes, inits, "cat", e2, rng, "chunk")


def _feeds(batch, seed):
    return {"x": np.random.default_rng(seed).standard_normal((batch, 3, 6, 6)).astype(np.float32)}


def _group(a, producer):
    return next(g for g in a.groups if producer in g.producers)


def test_chunk_bounds_follow_pruning_and_tie_pieces():
    a = Analysis(chunk_model())
    g = _group(a, "conv1")
    assert not g.frozen, g.reasons
    assert g.n_blocks == 2 and not g.proportional and g.multiple == 2, "two equal pieces, equal kept counts"
    assert np.array_equal(np.bincount(g.blocks), [4, 4])
    assert oracle_error(a, _feeds) <= 1e-4


def test_unequal_pieces_from_an_explicit_selection_are_wrong_so_they_are_tied():
    """The oracle can fail: keeping 3 channels of piece 1 and 1 of piece 2 breaks the run-time bounds,
    which is why the analysis requires equal counts."""
    a = Analysis(chunk_model())
    g = _group(a, "conv1")
    kept = {grp.id: np.arange(grp.channels) for grp in a.prunable}
    first, second = np.flatnonzero(g.blocks == 0), np.flatnonzero(g.blocks == 1)
    kept[g.id] = np.sort(np.concatenate([first[:3], second[:1]]))
    sel = Selection(kept, {k: np.ones(len(v)) for k, v in kept.items()})
    keep, gamma = sel.class_arrays(a)
    pruned, masked = Rewriter(a, keep, gamma).run(), Rewriter(a, keep, gamma, masked=True).run()
    x = _feeds(2, 0)
    try:
        err = rel_err(run(pruned, x), run(masked, x))
    except Exception:  # shapes no longer fit: equally a failure of the unequal selection
        err = np.inf
    assert err > 1e-3


def test_bounds_that_do_not_follow_freeze():
    """C - 4: right for the original 8 channels, wrong for any pruned count."""
    a = Analysis(chunk_model(add=-4, div=1))
    g = _group(a, "conv1")
    assert g.frozen and any("do not follow" in r and "Slice" in r for r in g.reasons), g.reasons
    assert oracle_error(a, _feeds) <= 1e-4


def test_bounds_from_other_channels_freeze_both():
    a = Analysis(chunk_model(shape_of="conv0", c0=8))
    assert not _group(a, "conv0").frozen or _group(a, "conv1").frozen
    assert _group(a, "conv1").frozen and _group(a, "conv0").frozen, "the sliced and the counted channels"
    assert any("do not follow" in r for r in _group(a, "conv0").reasons)
    assert oracle_error(a, _feeds) <= 1e-4


def test_off_by_one_bounds_leave_nothing_to_prune_or_freeze():
    """(C + 2) / 2 cuts 8 channels at 5: only the unpruned count satisfies it."""
    a = Analysis(chunk_model(add=2))
    g = _group(a, "conv1")
    assert g.frozen or g.fewest == g.channels
    if a.prunable:
        assert oracle_error(a, _feeds) <= 1e-4


def test_spatial_slice_bounds_from_the_channel_count_freeze():
    """Rows [0, C/2) of a tensor with C channels: the bound would move when channels go."""
    rng = np.random.default_rng(0)
    (c1, w1), (c3, w3) = _conv("conv1", "x", 8, 3, rng, 3), _conv("conv3", "rows", 5, 8, rng)
    nodes = [c1, helper.make_node("Relu", ["conv1"], ["r1"], name="relu1"),
             helper.make_node("Shape", ["r1"], ["shp"], name="shape"),
             helper.make_node("Gather", ["shp", "gidx"], ["dim"], name="gather", axis=0),
             helper.make_node("Div", ["dim", "div"], ["half"], name="div"),
             helper.make_node("Slice", ["r1", "zero", "half", "ax2"], ["rows"], name="rows"), c3]
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
                              [helper.make_tensor_value_info("conv3", TensorProto.FLOAT, [None, 5, 4, 6])],
                              w1 + w3 + [_int("gidx", 1), _int("div", 2), _int("zero", 0), _int("ax2", 2)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    a = Analysis(model)
    g = _group(a, "conv1")
    assert g.frozen and any("Slice" in r and "follow" in r for r in g.reasons), g.reasons



def reshape_model(source="r1", extra=None, hw=36, c=8, shared=False):
    """x -> conv1 (c) -> relu r1 -> Reshape(r1, [N, D, hw]) -> Reshape back to [N, c, 6, 6] (constant) ->
    conv3; x -> conv0 (c) -> conv4 added to conv3. D is computed at run time: Shape(`source`)[1], then
    `extra` = (op, constant) applied to it. `shared`: the same target also reshapes relu(conv0) (and back)
    before conv4."""
    rng = np.random.default_rng(1)
    scalar = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)  # noqa: E731
    nodes, inits = [], [scalar("gidx0", 0), scalar("gidx1", 1), _int("hw", hw), _int("back", 0, c, 6, 6),
                        _int("ax0", 0)]
    for name, x, cout, cin, k in (("conv1", "x", c, 3, 3), ("conv0", "x", c, 3, 3), ("conv4", "conv0", 5, c, 1)):
        n, w = _conv(name, x, cout, cin, rng, k)
        nodes.append(n)
        inits += w
    nodes += [helper.make_node("Relu", ["conv1"], ["r1"], name="relu1"),
              helper.make_node("Shape", ["r1"], ["shp_r1"], name="shape_r1"),
              helper.make_node("Shape", [source], ["shp_src"], name="shape_src"),
              helper.make_node("Gather", ["shp_r1", "gidx0"], ["n"], name="gather_n", axis=0),
              helper.make_node("Gather", ["shp_src", "gidx1"], ["d0"], name="gather_d", axis=0)]
    d = "d0"
    if extra is not None:
        inits.append(scalar("k", extra[1]))
        nodes.append(helper.make_node(extra[0], ["d0", "k"], ["d1"], name="arith"))
        d = "d1"
    nodes += [helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"], name="unsq_n"),
              helper.make_node("Unsqueeze", [d, "ax0"], ["d_1"], name="unsq_d"),
              helper.make_node("Concat", ["n1", "d_1", "hw"], ["target"], name="target", axis=0),
              helper.make_node("Reshape", ["r1", "target"], ["flat"], name="reshape_rt"),
              helper.make_node("Reshape", ["flat", "back"], ["r1b"], name="reshape_back")]
    if shared:  # conv4 (nodes[2]) then reads the reshaped relu(conv0), after it in topological order
        nodes[2].input[0] = "r0b"
        nodes += [helper.make_node("Relu", ["conv0"], ["r0"], name="relu0"),
                  helper.make_node("Reshape", ["r0", "target"], ["flat0"], name="reshape_rt0"),
                  helper.make_node("Reshape", ["flat0", "back"], ["r0b"], name="reshape_back0")]
        nodes = nodes[:2] + nodes[3:] + [nodes[2]]
    return _finish(nodes, inits, "r1b", c, rng, "rt_reshape")


def test_runtime_reshape_target_that_follows_the_channels_prunes():
    """Shape(r1)[1], also through arithmetic that keeps it (+0, *1), is the kept count in the pruned graph;
    2*Shape(r1)[1] with half the positions splits every channel's positions in two rows, also followed."""
    for extra, hw in ((None, 36), (("Add", 0), 36), (("Mul", 1), 36), (("Mul", 2), 18)):
        a = Analysis(reshape_model(extra=extra, hw=hw))
        g = _group(a, "conv1")
        assert not g.frozen, (extra, g.reasons)
        assert oracle_error(a, _feeds) <= 1e-4


def test_runtime_reshape_target_that_does_not_follow_becomes_the_kept_count():
    """Another tensor's channel count (conv0 has as many channels, pruned on their own) would break the
    pruned Reshape if it stayed. The target is a Concat that only this Reshape reads, so that element
    becomes the kept count (docs/DESIGN.md, "Attention heads"): both groups prune and the pruned graph
    equals the masked reference; so does max(C, 8), shape arithmetic that does not follow the count.
    Arithmetic the analysis does not understand (C ** 1) still freezes."""
    for source, extra in (("conv0", None), ("r1", ("Max", 8))):
        a = Analysis(reshape_model(source=source, extra=extra))
        assert not _group(a, "conv1").frozen and not _group(a, "conv0").frozen, [g.reasons for g in a.groups]
        assert oracle_error(a, _feeds) <= 1e-4
    a = Analysis(reshape_model(source="r1", extra=("Pow", 1)))  # Pow is not followed as shape arithmetic
    g = _group(a, "conv1")
    assert g.frozen and any("'arith'" in r for r in g.reasons), g.reasons


def test_runtime_reshape_target_read_by_two_reshapes_freezes():
    """The same computed target, Shape(conv0)[1], also reshapes conv0's channels: replacing its element
    would change the other Reshape too, and conv0's count must not move r1's target: both groups freeze
    and the reasons name the Reshape of r1."""
    a = Analysis(reshape_model(source="conv0", shared=True))
    for producer in ("conv1", "conv0"):
        g = _group(a, producer)
        assert g.frozen and any("'reshape_rt'" in r for r in g.reasons), (producer, g.reasons)
