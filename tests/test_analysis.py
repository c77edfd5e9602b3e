"""Analyzer facts that the oracle alone does not pin down: what is frozen, what is grouped."""
import numpy as np
import onnx
import zoo
from helpers import rel_err, run
from onnx import TensorProto, helper, numpy_helper

from onnxprune import api
from onnxprune.analysis import Analysis
from onnxprune.selection import counts_for_ratio, select


def _group_of(a: Analysis, producer: str):
    return next(g for g in a.groups if producer in g.producers)


def test_unknown_op_freezes_the_groups_it_touches(tmp_path):
    model = onnx.load(zoo.custom_op_graph(tmp_path / "custom.onnx"))
    a = Analysis(model)
    g1 = _group_of(a, "conv1")
    assert g1.frozen and any("MysteryOp" in r and "mystery" in r for r in g1.reasons)
    assert not _group_of(a, "conv2").frozen and not _group_of(a, "conv3").frozen
    pruned, report = api.prune(model, method="random", keep_ratio=0.5, seed=3)
    w = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    conv1 = next(n for n in pruned.graph.node if n.name == "conv1")
    conv2 = next(n for n in pruned.graph.node if n.name == "conv2")
    assert w[conv1.input[1]].shape == (8, 3, 3, 3), "frozen producer untouched"
    assert w[conv2.input[1]].shape[1] == 8, "consumer of frozen group untouched"
    assert w[conv2.input[1]].shape[0] == 4, "the next group is pruned"
    assert report.groups[g1.id].frozen and report.groups[g1.id].kept_count == 8


def test_residual_add_merges_and_se_gate_is_two_groups(zoo_models):
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    a = Analysis(onnx.load(z.path))
    merged = [g for g in a.groups if len(g.producers) > 1]
    assert merged, "the SE gate's second conv unites with the gated tensor's producer"
    # SE hidden width: a group whose only producer's consumers are a single conv
    assert any(len(g.producers) == 1 and len(g.consumers) == 1 and g.channels < 8 for g in a.groups)


def _planted_model(planted):
    """input -> Conv(3->12) -> Relu -> Conv(12->5) -> GAP -> Flatten; consumer slices of `planted`
    channels are 100x larger than the others."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((12, 3, 3, 3)).astype(np.float32)
    w2 = 0.01 * rng.standard_normal((5, 12, 1, 1)).astype(np.float32)
    w2[:, planted] *= 100
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Relu", ["a"], ["r"], name="r"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2")]
    g = helper.make_graph(nodes, "planted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 8, 8])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_magnitude_picks_planted_channels():
    planted = [1, 4, 7, 10]
    for norm in ("l1", "l2"):
        a = Analysis(_planted_model(planted))
        g = _group_of(a, "c1")
        sel = select(a, {g.id: 4}, "magnitude", norm=norm)
        assert sorted(g.classes[sel.kept[g.id]].tolist()) == sorted(g.classes[planted].tolist())


def test_grouped_conv_keeps_equal_counts_per_block(zoo_models):
    z = next(z for z in zoo_models if z.name == "grouped" and z.exporter == "ts17")
    model = onnx.load(z.path)
    a = Analysis(model)
    blocked = [g for g in a.prunable if g.n_blocks > 1]
    assert blocked
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=0)
    for g in blocked:
        counts = np.bincount(g.blocks[sel.kept[g.id]], minlength=g.n_blocks)
        assert len(set(counts.tolist())) == 1
    pruned = api.apply_selection(a, sel)
    feeds = zoo.random_input(z, 2, 0)
    assert rel_err(run(pruned, feeds), run(api.apply_selection(a, sel, masked=True), feeds)) <= 1e-4


def test_weight_that_is_a_graph_output_is_never_sliced(tmp_path):
    """Issue 16, item 2: the shipped ResNet with one Conv weight also exposed as a graph output. The weight
    keeps its shape and values (the output is the original weight), the groups it touches are frozen, and
    the pruned file loads in ONNX Runtime and computes its masked reference (it failed to load before)."""
    from click.testing import CliRunner
    from helpers import run_file

    from onnxprune.cli import main
    m = onnx.load("models/fmnist_resnet.onnx")
    conv = [n for n in m.graph.node if n.op_type == "Conv"][2]
    init = next(t for t in m.graph.initializer if t.name == conv.input[1])
    m.graph.output.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    src = tmp_path / "exposed.onnx"
    onnx.save(m, src)
    a = Analysis(onnx.load(src))
    touched = [g for g in a.groups if conv.name in g.producers or conv.name in g.consumers]
    assert len(touched) == 2 and all(g.frozen and any("graph output" in r for r in g.reasons) for g in touched)
    assert a.prunable, "the other groups are still prunable"
    out, masked = tmp_path / "p.onnx", tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["prune", str(src), "-o", str(out), "--masked-reference", str(masked),
                                    "--method", "magnitude", "--keep-ratio", "0.5"])
    assert res.exit_code == 0, res.output
    x = {m.graph.input[0].name: np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)}
    got, want = run_file(out, x), run_file(masked, x)
    assert np.array_equal(got[1], numpy_helper.to_array(init)), "the exposed weight is the original"
    assert rel_err(got[:1], want[:1]) <= 1e-4
    size = lambda model: sum(int(np.prod(t.dims)) for t in model.graph.initializer)  # noqa: E731
    assert size(onnx.load(str(out))) < size(m)


def test_shape_constant_that_is_a_graph_output_keeps_its_value(zoo_models, tmp_path):
    """Issue 16, item 2, for a constant that a rewrite recomputes rather than slices: the zoo's Split sizes
    exposed as a graph output stay the original sizes, and the channels the Split cuts are frozen."""
    from helpers import run_file
    z = next(z for z in zoo_models if z.name == "split" and z.exporter == "ts17")
    m = onnx.load(str(z.path))
    split = next(n for n in m.graph.node if n.op_type == "Split")
    sizes = next((t for t in m.graph.initializer if t.name == split.input[1]), None) or next(
        n.attribute[0].t for n in m.graph.node if n.op_type == "Constant" and n.output[0] == split.input[1])
    sizes.name = split.input[1]
    m.graph.output.append(helper.make_tensor_value_info(sizes.name, sizes.data_type, list(sizes.dims)))
    a = Analysis(m)
    assert any(any("is a graph output" in r for r in g.reasons) for g in a.groups)
    pruned = api.apply_selection(a, select(a, counts_for_ratio(a, 0.5), "random", seed=0))
    onnx.save(pruned, tmp_path / "p.onnx")
    got = run_file(tmp_path / "p.onnx", zoo.random_input(z, 2, 0))
    assert np.array_equal(got[-1], numpy_helper.to_array(sizes))


def test_frozen_layers_still_count_their_macs(tmp_path):
    """A grouped ConvTranspose (not pruned) and a Conv whose weight is a graph input (given at run time) are
    frozen, but their MACs count, from the shapes: H·W·Cin·(Cout/g)·k per input position for the ConvTranspose,
    H'·W'·Cout·(Cin/g)·k for the Conv."""
    rng = np.random.default_rng(0)
    wt = numpy_helper.from_array(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), "wt")  # Cin 4, Cout/g 3
    nodes = [helper.make_node("ConvTranspose", ["x", "wt"], ["t"], group=2, strides=[2, 2], name="up"),
             helper.make_node("Conv", ["t", "wc"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5]),
                                       helper.make_tensor_value_info("wc", TensorProto.FLOAT, [5, 6, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 10, 10])], [wt])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    a = api.analyze(str(path))
    macs = {c.node: c.macs for c in a.costs}
    assert macs == {"up": 5 * 5 * 4 * 3 * 2 * 2, "conv": 10 * 10 * 5 * 6 * 3 * 3}, macs
    assert not a.unknown_costs and not a.prunable
