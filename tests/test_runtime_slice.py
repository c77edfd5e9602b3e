"""Slice bounds computed at run time from shapes (TorchScript's torch.chunk: Shape -> Gather -> Add(1) ->
Div(2) -> Mul(j)). The pruned graph keeps the computation, so it must produce the bounds of the pruned
channels: the analysis ties the pieces to equal kept counts when the arithmetic follows the channel count
and freezes otherwise. The oracle is the masked reference (pruned == masked for random selections)."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from helpers import oracle_error, rel_err, run
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
    n, w = _conv("conv3", "cat", 5, e2, rng)
    nodes.append(n)
    inits += w
    nodes.append(helper.make_node("Add", ["conv3", "conv4"], ["y"], name="out_add"))
    graph = helper.make_graph(nodes, "chunk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


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
