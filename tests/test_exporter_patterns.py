"""Issue 16, items 4-10 and the nested-If part of 17: patterns of real exporters that froze channels (folded
constants, Keras 3 Flatten, paddle2onnx's upsample by size, a YOLO head's shapes, ShuffleNet's shuffles,
grouped Convs on concatenations, DepthToSpace / SpaceToDepth) and models with If subgraphs. Each pruned
graph is checked against its masked reference (docs/DESIGN.md, invariant 2), written to disk and run by
ONNX Runtime from there."""
import numpy as np
import onnx
import onnxruntime as ort
import patterns as P
import pytest
import zoo
from click.testing import CliRunner
from helpers import oracle_error, rel_err, run

from onnxprune import api, load_model, save_model
from onnxprune.analysis import Analysis
from onnxprune.cli import main as cli_main
from onnxprune.errors import UserError
from onnxprune.graph.normalise import normalise
from onnxprune.graph.params import count_params
from onnxprune.rewrite import Rewriter
from onnxprune.selection import Selection


def _feeds(batch, seed, shape=(3, 8, 8), extra=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape)) * rng.uniform(0.5, 2.0, (batch, 1, 1, 1)) + rng.standard_normal(
        (batch, 1, 1, 1))
    return {"x": x.astype(np.float32), **(extra or {})}


def _session(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _keep_all(a: Analysis) -> onnx.ModelProto:
    sel = Selection({g.id: np.arange(g.channels) for g in a.prunable}, {g.id: np.ones(g.channels) for g in a.prunable})
    keep, gamma = sel.class_arrays(a)
    return Rewriter(a, keep, gamma).run()


def _group(a: Analysis, producer: str):
    return next(g for g in a.groups if producer in g.producers)


def _exact(tmp_path, m: onnx.ModelProto, feeds=_feeds, name="model") -> Analysis:
    """Write `m`, analyse the file; keep-all equals the original, random selections equal their masked
    reference, and a pruned model written to disk runs in ONNX Runtime and equals its masked reference."""
    path = tmp_path / f"{name}.onnx"
    onnx.save(m, str(path))
    model = load_model(path)
    a = Analysis(model)
    assert a.prunable
    x = feeds(3, 0)
    assert rel_err(run(_keep_all(a), x), _session(path).run(None, x)) <= 1e-5
    assert oracle_error(a, feeds) <= 1e-4
    pruned, report = api.prune(path, method="magnitude", keep_ratio=0.5)
    out, ref = tmp_path / f"{name}.pruned.onnx", tmp_path / f"{name}.masked.onnx"
    save_model(pruned, out)
    save_model(api.masked_reference(report), ref)
    got, want = _session(out).run(None, x), _session(ref).run(None, x)
    assert rel_err(got, want) <= 1e-4
    assert report.macs_after < report.macs_before
    return a


# ----------------------------------------------------------------------------------------- item 4
def test_paddle_raw_conv_bias_is_folded(tmp_path):
    """Add(Conv, Reshape(Constant, Identity(Constant))) biases were run-time tensors: every conv froze."""
    m = P.paddle_raw_bias()
    a = _exact(tmp_path, m)
    assert not _group(a, "Conv.0").frozen and not _group(a, "Conv.1").frozen
    kept = _keep_all(a)
    assert count_params(kept) == count_params(m)  # folding stored nothing twice
    assert [i.name for i in kept.graph.input] == ["x"] and [o.name for o in kept.graph.output] == ["y"]
    assert kept.opset_import[0].version == 11


def test_folding_never_copies_a_shared_weight_nor_draws_random_values():
    """Slice of a weight that a Conv also reads whole stays a Slice (folding it would store a second copy);
    a RandomNormal stays a random draw; a foldable Reshape(Constant) beside them is folded."""
    m = P.shared_weight_slice()
    n = normalise(m)
    ops = [node.op_type for node in n.graph.node]
    assert "Slice" in ops and "RandomNormal" in ops and "Reshape" not in ops
    assert count_params(n) == count_params(m)


# ----------------------------------------------------------------------------------------- item 5
def test_keras3_flatten_target_follows(tmp_path):
    """tf2onnx's Keras 3 Flatten: Reshape(t, Cast(Concat(Slice(Shape(t)), [H·W·C]))) froze the conv before it."""
    a = _exact(tmp_path, P.keras_flatten())
    assert not _group(a, "conv2").frozen


# --------------------------------------------------------------------------- item 6 and DB's upsample
def test_upsample_by_runtime_size_follows(tmp_path):
    """paddle2onnx's F.interpolate(size=...): Resize sizes Concat(Slice(Shape(x), 0:2), [H, W])."""
    a = _exact(tmp_path, P.upsample_by_size())
    assert not _group(a, "conv2").frozen


def test_shape_elements_without_channels_go_anywhere(tmp_path):
    """Shape -> Gather(batch, H) -> ConstantOfShape reads no channel count: nothing freezes. Gathering the
    channel count instead still freezes (a pruned graph would compute another value)."""
    a = _exact(tmp_path, P.shape_to_constant_of_shape(channel=False))
    assert not _group(a, "conv1").frozen
    b = Analysis(P.shape_to_constant_of_shape(channel=True))
    assert _group(b, "conv1").frozen and "ConstantOfShape" in " ".join(_group(b, "conv1").reasons)


@pytest.mark.parametrize("exp", zoo.EXPORTERS)
def test_yolo_head_features_prunable(zoo_models, exp):
    """YOLOv8's head builds its anchors and strides from the feature maps' shapes: the P3 and P4 features (read
    by Shape -> ConstantOfShape) stay prunable; the box/class outputs and the DFL stay frozen."""
    z = next((z for z in zoo_models if z.name == "yolo_head" and z.exporter == exp), None)
    if z is None:
        pytest.skip(f"export failed: {zoo.EXPORT_FAILURES.get(('yolo_head', exp))}")
    a = Analysis(load_model(z.path))
    shapes = {n.name: n.inputs[1].values.shape for n in a.graph.nodes if n.op == "Conv"}
    features = [g for g in a.groups if any(shapes.get(p) in ((12, 8, 3, 3), (16, 12, 3, 3)) for p in g.producers)]
    assert len(features) == 2 and not any(g.frozen for g in features), [g.reasons for g in features]


# ----------------------------------------------------------------------------------------- item 7
def test_shuffle_of_one_channel_class_follows(tmp_path):
    """A channel axis holding one class on every position (ShuffleNet's passed-through half after many
    shuffles) went through the shuffle's Reshapes as 'moves channels across axes'."""
    a = _exact(tmp_path, P.single_class_shuffle())
    assert not _group(a, "conv1").frozen and not _group(a, "conv0").frozen


# ----------------------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("exp", zoo.EXPORTERS)
def test_grouped_conv_on_concat_and_on_split_piece(zoo_models, exp):
    """groups=4 on cat(a, b) and groups=2 on a Split piece: every group but the classifier's is prunable, the
    concatenated producers are one group in 4 equal blocks (the oracle runs on it in test_oracle.py)."""
    z = next((z for z in zoo_models if z.name == "grouped_concat" and z.exporter == exp), None)
    if z is None:
        pytest.skip(f"export failed: {zoo.EXPORT_FAILURES.get(('grouped_concat', exp))}")
    a = Analysis(load_model(z.path))
    assert len(a.prunable) == len(a.groups) - 1, [g.reasons for g in a.groups]
    joined = next(g for g in a.groups if len(g.producers) == 2)
    assert joined.channels == 16 and joined.n_blocks == 4 and not joined.proportional


# ----------------------------------------------------------------------------------------- item 10
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_space_to_depth(tmp_path, mode):
    """DepthToSpace ties each output channel's s² input channels (c·s²+k in CRD, k·C+c in DCR): the producer
    keeps whole blocks; SpaceToDepth's output repeats each channel s² times."""
    a = _exact(tmp_path, P.depth_to_space(mode), name=mode)
    g = _group(a, "conv1")
    assert not g.frozen and g.channels == 4  # 16 filters in 4 blocks of 2²
    assert not _group(a, "conv2").frozen


# ----------------------------------------------------------------------------------------- item 9
def test_if_reading_main_tensors(tmp_path):
    """Tensors a subgraph reads are frozen, the rest prunes; the main-graph weight both branches read is
    stored once in the pruned file; both branches run and equal the masked reference."""
    m = P.if_reads_main()
    path = tmp_path / "if.onnx"
    onnx.save(m, str(path))
    _session(path)
    a = Analysis(load_model(path))
    assert _group(a, "conv2").frozen and "subgraph" in " ".join(_group(a, "conv2").reasons)
    assert not _group(a, "conv1").frozen
    pruned, report = api.prune(path, method="magnitude", keep_ratio=0.5)
    out, ref = tmp_path / "if.pruned.onnx", tmp_path / "if.masked.onnx"
    save_model(pruned, out)
    save_model(api.masked_reference(report), ref)
    stored = [t.name for t in pruned.graph.initializer]
    for node in pruned.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                stored += [t.name for t in attr.g.initializer]
    assert stored.count("w_side") == 1
    assert count_params(pruned) < count_params(m)
    for c in (True, False):
        x = _feeds(2, 1, extra={"c": np.array(c)})
        got, want = _session(out).run(None, x), _session(ref).run(None, x)
        assert rel_err(got, want) <= 1e-4


def test_parameters_counted_inside_subgraphs():
    """Weights stored as Constant nodes in If branches are parameters (2 x 4·3·3·3 here)."""
    assert count_params(P.network_in_if()) == 2 * 4 * 3 * 3 * 3


def test_network_wholly_inside_if_is_refused_by_name(tmp_path):
    path = tmp_path / "vad.onnx"
    onnx.save(P.network_in_if(), str(path))
    _session(path)  # a valid model ONNX Runtime runs
    with pytest.raises(UserError, match=r"2 Conv, Gemm or MatMul layers all lie inside subgraphs \(of 'rate_if'\)"):
        api.analyze(path)
    res = CliRunner().invoke(cli_main, ["analyze", str(path)])
    assert res.exit_code == 2 and "inside subgraphs" in res.output and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("condition", ["constant", "shape"])
def test_nested_ifs_are_linear(monkeypatch, condition):
    """30 nested Ifs: ONNX Runtime's symbolic shape inference copies the taken branch of an If it can decide
    over the other and infers both, twice the work per level (2³⁰ subgraph inferences). A constant
    condition is folded away; a computed one skips that inference. Counted, not timed: a counter stops the
    inference after 64 subgraphs."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    calls = []
    real = SymbolicShapeInference._onnx_infer_subgraph

    def counted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 64:
            raise RuntimeError("exponential")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(SymbolicShapeInference, "_onnx_infer_subgraph", counted)
    a = Analysis(P.nested_ifs(30, condition))
    assert len(calls) <= 64
    assert len(a.groups) == 1 and a.total_macs == 4 * 3 * 9 * 64


# ----------------------------------------------------------------------------------------- session 12
def _old_style_net(opset: int, initializers_as_inputs: bool) -> onnx.ModelProto:
    """x[N, 3, 8, 8] -> Conv(16) -> BatchNormalization -> Relu -> Upsample x2 (opset < 10; its scales an attribute
    below 9) or Resize -> Conv(8);
    with `initializers_as_inputs` every weight is also listed as a graph input (IR 3 style)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def t(name, arr):
        return numpy_helper.from_array(np.asarray(arr, np.float32), name)
    inits = [t("w1", rng.standard_normal((16, 3, 3, 3))), t("b1", rng.standard_normal(16)),
             t("s", rng.uniform(0.5, 2, 16)), t("bb", rng.standard_normal(16)), t("m", rng.standard_normal(16)),
             t("v", rng.uniform(0.5, 2, 16)), t("w2", rng.standard_normal((8, 16, 3, 3))),
             t("scales", [1, 1, 2, 2])]
    if opset < 9:  # scales an attribute
        inits.pop()
        up = helper.make_node("Upsample", ["r"], ["u"], mode="nearest", scales=[1.0, 1.0, 2.0, 2.0])
    elif opset < 10:
        up = helper.make_node("Upsample", ["r", "scales"], ["u"], mode="nearest")
    else:
        inits.append(t("roi", np.zeros(0)))  # not optional before opset 13
        up = helper.make_node("Resize", ["r", "roi", "scales"], ["u"], mode="nearest")
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["a", "s", "bb", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]), up,
             helper.make_node("Conv", ["u", "w2"], ["y"], pads=[1] * 4)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])]
    if initializers_as_inputs:
        inputs += [helper.make_tensor_value_info(i.name, TensorProto.FLOAT, list(i.dims)) for i in inits]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])
    g = helper.make_graph(nodes, "old", inputs, [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 6  # as torch writes with keep_initializers_as_inputs=True
    return m


@pytest.mark.parametrize("opset", [7, 9])
def test_old_opset_is_raised_by_the_version_converter(tmp_path, opset):
    """Opsets below 11 (the ONNX model zoo's opset 7-9 models) were refused; they are raised to 11 by ONNX's
    version converter and prune exactly (the Upsample becomes a Resize)."""
    m = _old_style_net(opset, initializers_as_inputs=False)
    a = _exact(tmp_path, m)
    assert not _group(a, "Conv_0").frozen
    pruned, _ = api.prune(tmp_path / "model.onnx", method="magnitude", keep_ratio=0.5)
    assert {i.domain: i.version for i in pruned.opset_import}.get("", 0) == 11
    # against the original opset-9 file as ONNX Runtime runs it
    x = _feeds(2, 1)
    assert rel_err(run(_keep_all(a), x), _session(tmp_path / "model.onnx").run(None, x)) <= 1e-5


def test_initializers_listed_as_inputs_are_weights(tmp_path):
    """Torch's keep_initializers_as_inputs=True (IR 3 style): every weight is also a graph input. They were
    taken for run-time tensors and every layer froze; now they are weights, and the pruned model's inputs
    are the ones a caller feeds."""
    m = _old_style_net(11, initializers_as_inputs=True)
    a = _exact(tmp_path, m)
    assert not _group(a, "Conv_0").frozen
    pruned, _ = api.prune(tmp_path / "model.onnx", method="magnitude", keep_ratio=0.5)
    assert [i.name for i in pruned.graph.input] == ["x"]
