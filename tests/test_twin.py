"""The torch twin (onnxprune.twin): equals ONNX Runtime on the zoo and on single ops, equals the
masked reference when gated with keep·γ, and its gradients with respect to the gates are right."""
import numpy as np
import onnx
import pytest
import torch
import zoo
from helpers import rel_err, run
from onnx import TensorProto as T
from onnx import helper

from onnxprune import load_model
from onnxprune.analysis import Analysis
from onnxprune.rewrite import Rewriter
from onnxprune.selection import counts_for_ratio, select
from onnxprune.twin import Twin

CASES = [(name, exp) for name, _ in zoo.zoo_models() for exp in zoo.EXPORTERS]




@pytest.fixture(scope="module")
def zoo_analyses(zoo_models):
    """(ZooModel, Analysis) by (name, exporter); analysed once for all tests of this module."""
    return {(z.name, z.exporter): z for z in zoo_models}, {}


def _get(zoo_analyses, name, exp):
    by_key, cache = zoo_analyses
    if (name, exp) not in by_key:
        pytest.skip(f"export failed: {zoo.EXPORT_FAILURES.get((name, exp))}")
    if (name, exp) not in cache:
        cache[(name, exp)] = Analysis(load_model(by_key[(name, exp)].path))
    return by_key[(name, exp)], cache[(name, exp)]


def _np(outs):
    return [o.detach().cpu().numpy() for o in outs]


@pytest.mark.parametrize("name,exp", CASES)
def test_twin_equals_onnxruntime(zoo_analyses, name, exp):
    z, a = _get(zoo_analyses, name, exp)
    twin = Twin(a)
    for batch in (1, 3):
        feeds = zoo.random_input(z, batch, batch)
        with torch.no_grad():
            got = _np(twin(feeds))
        want = run(a.model, feeds)
        assert [g.shape for g in got] == [w.shape for w in want]
        assert rel_err(got, want) <= 1e-4


@pytest.mark.parametrize("name,exp", CASES)
def test_gated_twin_equals_masked_reference(zoo_analyses, name, exp):
    z, a = _get(zoo_analyses, name, exp)
    twin = Twin(a)
    seed = CASES.index((name, exp))  # a different random selection and γ for every case
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=seed, random_gamma=True)
    keep, gamma = sel.class_arrays(a)
    masked = Rewriter(a, keep, gamma, masked=True).run()
    feeds = zoo.random_input(z, 3, seed)
    with torch.no_grad():
        got = _np(twin(feeds, twin.gates_for(sel)))
        assert rel_err(got, run(masked, feeds)) <= 1e-4
        assert rel_err(got, run(a.model, feeds)) > 1e-4  # the gates did something


def test_replaced_weights_equal_masked_reference(zoo_analyses):
    """Re-fitted consumer weights: used as given with removed slices zeroed by keep, not gated."""
    z, a = _get(zoo_analyses, "grouped", "ts17")
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=3, random_gamma=True)
    keep, gamma = sel.class_arrays(a)
    edits = [e for e in a.edits if e.kind in ("consumer", "grouped_consumer")]
    chosen = [e for e in edits if e.kind == "grouped_consumer"][:1] + [e for e in edits if e.kind == "consumer"][::3]
    assert chosen[0].kind == "grouped_consumer" and len(chosen) > 2
    rng = np.random.default_rng(0)
    replace = {}
    for e in chosen:  # random re-fits, not zero on the removed inputs: the keep mask must zero them
        node = a.graph.nodes[e.node]
        w = np.asarray(node.inputs[e.input].values)
        replace[e.node] = {e.input: (w * rng.uniform(0.5, 1.5, w.shape)).astype(w.dtype)}
        if node.op == "Conv" and (len(node.inputs) < 3 or node.inputs[2].is_empty()):
            replace[e.node][2] = rng.standard_normal(w.shape[0]).astype(np.float32)  # a bias the re-fit adds
    want = run(Rewriter(a, keep, gamma, masked=True, replace=replace).run(), zoo.random_input(z, 2, 0))
    gates = torch.tensor(keep * gamma, dtype=torch.float32)
    with torch.no_grad():
        got = _np(Twin(a, replace=replace, keep=keep)(zoo.random_input(z, 2, 0), gates))
        assert rel_err(got, want) <= 1e-4
        unmasked = _np(Twin(a, replace=replace)(zoo.random_input(z, 2, 0), gates))
        assert rel_err(unmasked, want) > 1e-3


@pytest.mark.parametrize("name", ["mbv3_se", "grouped"])
def test_gate_gradients_match_finite_differences(zoo_analyses, name):
    z, a = _get(zoo_analyses, name, "ts17")
    twin = Twin(a, dtype=torch.float64)
    feeds = zoo.random_input(z, 2, 0)
    with torch.no_grad():  # the float64 twin is the same model
        assert rel_err(_np(twin(feeds)), run(a.model, feeds)) <= 1e-4
    keep, gamma = select(a, counts_for_ratio(a, 0.7), "random", seed=0, random_gamma=True).class_arrays(a)
    base = torch.tensor(keep * gamma, dtype=torch.float64)
    gates = base.clone().requires_grad_(True)
    sum(o.sum() for o in twin(feeds, gates)).backward()
    grad = gates.grad.numpy()
    assert grad[0] == 0  # the fixed class is never gated
    rng = np.random.default_rng(0)
    classes = np.unique(np.concatenate([g.classes for g in a.prunable]))
    gated = classes[np.abs(grad[classes]) > 0]
    assert len(gated) > len(classes) // 2
    eps = 1e-6
    for c in rng.choice(gated, 5, replace=False).tolist() + [int(classes[0])]:
        hi, lo = base.clone(), base.clone()
        hi[c] += eps
        lo[c] -= eps
        with torch.no_grad():
            fd = (sum(o.sum() for o in twin(feeds, hi)) - sum(o.sum() for o in twin(feeds, lo))).item() / (2 * eps)
        assert abs(fd - grad[c]) <= 1e-6 * max(1.0, abs(fd)), (c, fd, grad[c])


def test_every_analyzer_op_is_supported():
    from onnxprune.analysis.handlers import supported_ops
    from onnxprune.twin import supported_ops as twin_ops
    assert set(supported_ops()) <= set(twin_ops())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_twin_on_cuda(zoo_analyses, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 is not float32 accuracy
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for name in ("shuffle", "mbv3_se"):
        z, a = _get(zoo_analyses, name, "ts17")
        twin = Twin(a, device="cuda")
        sel = select(a, counts_for_ratio(a, 0.5), "random", seed=0, random_gamma=True)
        feeds = zoo.random_input(z, 3, 0)
        gates = twin.gates_for(sel).requires_grad_(True)
        out = twin(feeds, gates)
        assert all(o.is_cuda for o in out)
        sum(o.sum() for o in out).backward()
        assert gates.grad.is_cuda
        keep, gamma = sel.class_arrays(a)
        assert rel_err(_np(out), run(Rewriter(a, keep, gamma, masked=True).run(), feeds)) <= 1e-4
    for case in OPS:
        _, nodes, inputs, consts, outputs, opset = case
        model = _op_model(nodes, inputs, consts, outputs, opset)
        got = _np(Twin(Analysis(model), device="cuda")({k: torch.from_numpy(v) for k, v in inputs.items()}))
        for g, w in zip(got, run(model, inputs)):
            assert g.shape == w.shape and (rel_err([g], [w]) <= 1e-4 if w.dtype == np.float32 else np.array_equal(g, w))


def test_gates_shape_and_unknown_op(zoo_analyses, tmp_path):
    z, a = _get(zoo_analyses, "chain", "ts17")
    twin = Twin(a)
    with pytest.raises(ValueError, match="gates must have shape"):
        twin(zoo.random_input(z, 1, 0), torch.ones(3))
    # any intermediate tensor can be returned
    conv = next(n for n in a.graph.nodes if n.op == "Conv")
    feat, = twin(zoo.random_input(z, 1, 0), outputs=[conv.outputs[0].name])
    assert feat.shape[0] == 1 and feat.dim() == 4
    custom = Analysis(onnx.load(str(zoo.custom_op_graph(tmp_path / "custom.onnx"))))
    with pytest.raises(NotImplementedError, match="com.example::MysteryOp.*'mystery'"):
        Twin(custom)


# ------------------------------------------------------------------------- single ops vs ORT
def _t(*shape, seed=0, positive=False):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.1 if positive else x


def _i(*vals):
    return np.array(vals, dtype=np.int64)


def N(op, ins, outs=("y",), **attrs):
    return helper.make_node(op, list(ins), list(outs), **attrs)


X4 = {"x": _t(2, 4, 7, 6)}
X3 = {"x": _t(2, 5, 9)}

# (id, nodes, graph inputs, constants, outputs {name: elem type}, opset)
OPS = [
    ("conv_pads_groups", [N("Conv", "xwb", pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2], group=2)],
     X4, {"w": _t(6, 2, 3, 3), "b": _t(6)}, None, 17),
    ("conv_same_upper", [N("Conv", "xw", auto_pad="SAME_UPPER", strides=[2, 2])], X4, {"w": _t(3, 4, 2, 3)}, None, 17),
    ("conv_same_lower", [N("Conv", "xw", auto_pad="SAME_LOWER", strides=[2, 3])], X4, {"w": _t(3, 4, 4, 3)}, None, 11),
    ("conv_valid_1d", [N("Conv", "xwb", auto_pad="VALID", strides=[2])], X3, {"w": _t(4, 5, 3), "b": _t(4)}, None, 17),
    ("conv_depthwise_3d", [N("Conv", "xw", pads=[1] * 6, group=2)], {"x": _t(1, 2, 4, 5, 3)}, {"w": _t(2, 1, 3, 3, 3)},
     None, 17),
    ("convT_stride_outpad", [N("ConvTranspose", "xwb", strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 1])],
     X4, {"w": _t(4, 3, 3, 3), "b": _t(3)}, None, 17),
    ("convT_group_dil", [N("ConvTranspose", "xw", strides=[1, 2], dilations=[2, 1], group=2)],
     X4, {"w": _t(4, 2, 2, 3)}, None, 17),
    ("convT_output_shape", [N("ConvTranspose", "xw", strides=[2, 2], output_shape=[15, 12])],
     X4, {"w": _t(4, 3, 3, 3)}, None, 17),
    ("convT_same_upper", [N("ConvTranspose", "xw", strides=[2, 2], auto_pad="SAME_UPPER")],
     X4, {"w": _t(4, 3, 3, 3)}, None, 17),
    ("gemm_trans", [N("Gemm", "awc", alpha=0.7, beta=1.3, transA=1, transB=1)], {"a": _t(5, 3)},
     {"w": _t(4, 5), "c": _t(1, 4)}, None, 13),
    ("gemm_plain", [N("Gemm", "aw")], {"a": _t(3, 5)}, {"w": _t(5, 4)}, None, 13),
    ("matmul_3d", [N("MatMul", "xw")], X3, {"w": _t(9, 4)}, None, 13),
    ("binary_broadcast", [N("Add", "xa", ["s1"]), N("Sub", ["s1", "b"], ["s2"]), N("Mul", ["s2", "a"], ["s3"]),
                          N("Div", ["s3", "p"], ["s4"]), N("Max", ["s4", "x", "a"], ["s5"]),
                          N("Min", ["s5", "b"], ["s6"]), N("Sum", ["s6", "x", "b"], ["s7"]),
                          N("Mean", ["s7", "a"], ["s8"]), N("PRelu", ["s8", "a"])],
     X4, {"a": _t(4, 1, 1, seed=1), "b": _t(6, seed=2), "p": _t(1, 4, 1, 1, seed=3, positive=True)}, None, 17),
    ("pow", [N("Pow", ["p", "e"])], {"p": _t(3, 4, positive=True)}, {"e": _t(4)}, None, 15),
    ("pow_int_exponent", [N("Pow", ["p", "e"])], {"p": _t(3, 4)}, {"e": _i(2)}, None, 15),
    *[(f"unary_{op}", [N(op, "x", **kw)], {"x": _t(3, 4, 5, positive=pos) * (2 if not pos else 1)}, {}, None, op_set)
      for op, kw, pos, op_set in [
          ("Relu", {}, False, 17), ("LeakyRelu", {"alpha": 0.2}, False, 17), ("Sigmoid", {}, False, 17),
          ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, False, 17), ("HardSwish", {}, False, 17),
          ("Tanh", {}, False, 17), ("Elu", {"alpha": 0.7}, False, 17), ("Selu", {}, False, 17),
          ("Celu", {"alpha": 1.5}, False, 17), ("Softplus", {}, False, 17), ("Softsign", {}, False, 17),
          ("Gelu", {}, False, 20), ("Gelu", {"approximate": "tanh"}, False, 20), ("Erf", {}, False, 17),
          ("Exp", {}, False, 17), ("Log", {}, True, 17), ("Sqrt", {}, True, 17), ("Neg", {}, False, 17),
          ("Abs", {}, False, 17), ("Identity", {}, False, 17), ("Floor", {}, False, 17), ("Ceil", {}, False, 17),
          ("Round", {}, False, 17), ("Reciprocal", {}, True, 17), ("Mish", {}, False, 18), ("Sin", {}, False, 17),
          ("Cos", {}, False, 17), ("Sign", {}, False, 17), ("ThresholdedRelu", {"alpha": 0.5}, False, 17),
          ("Dropout", {}, False, 17)]],
    ("clip_inputs", [N("Clip", "xab")], X3, {"a": np.float32(-0.3), "b": np.float32(0.5)}, None, 13),
    ("clip_max_only", [N("Clip", ["x", "", "b"])], X3, {"b": np.float32(0.2)}, None, 13),
    ("clip_attrs", [N("Clip", "x", min=-0.1, max=0.4)], X3, {}, None, 6),
    ("batchnorm", [N("BatchNormalization", "xsbmv", epsilon=1e-3)], X4,
     {"s": _t(4), "b": _t(4, seed=1), "m": _t(4, seed=2), "v": _t(4, seed=3, positive=True)}, None, 15),
    ("instancenorm", [N("InstanceNormalization", "xsb", epsilon=1e-4)], X4, {"s": _t(4), "b": _t(4, seed=1)}, None, 17),
    ("layernorm", [N("LayerNormalization", "xsb", ["y", "m", "r"], axis=2)], X4,
     {"s": _t(7, 6), "b": _t(6, seed=1)}, {"y": T.FLOAT, "m": T.FLOAT, "r": T.FLOAT}, 17),
    ("maxpool_ceil", [N("MaxPool", "x", kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1)],
     X4, {}, None, 17),
    ("maxpool_dilated", [N("MaxPool", "x", kernel_shape=[2, 2], dilations=[2, 1], strides=[1, 2])], X4, {}, None, 17),
    ("maxpool_same", [N("MaxPool", "x", kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")], X4, {}, None, 17),
    ("avgpool_incl_pad", [N("AveragePool", "x", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 0],
                            count_include_pad=1)], X4, {}, None, 17),
    ("avgpool_excl_pad_ceil", [N("AveragePool", "x", kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1],
                                 ceil_mode=1)], X4, {}, None, 17),
    ("avgpool_incl_pad_ceil", [N("AveragePool", "x", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                 ceil_mode=1, count_include_pad=1)], X4, {}, None, 17),
    ("avgpool_1d_same_lower", [N("AveragePool", "x", kernel_shape=[4], strides=[2], auto_pad="SAME_LOWER")],
     X3, {}, None, 17),
    ("lppool", [N("LpPool", "x", kernel_shape=[2, 3], strides=[1, 2], p=2)], X4, {}, None, 17),
    ("global_pools", [N("GlobalAveragePool", "x", ["a"]), N("GlobalMaxPool", "x", ["m"]),
                      N("GlobalLpPool", "x", ["l"], p=3)], X4, {}, {"a": T.FLOAT, "m": T.FLOAT, "l": T.FLOAT}, 17),
    ("reduce_attr_axes", [N("ReduceMean", "x", ["a"], axes=[1, 3]), N("ReduceMax", "x", ["b"], axes=[-1], keepdims=0),
                          N("ReduceMin", "x", ["c"], axes=[0, 2]), N("ReduceProd", "x", ["d"], axes=[2, 3]),
                          N("ReduceL1", "x", ["e"], axes=[1]), N("ReduceL2", "x", ["f"], axes=[1], keepdims=0),
                          N("ReduceLogSumExp", "x", ["g"], axes=[3]), N("ReduceSumSquare", "x", ["h"]),
                          N("ReduceSum", ["x", "ax"], ["i"])],
     X4, {"ax": _i(2, 3)}, dict.fromkeys("abcdefghi", T.FLOAT), 13),
    ("reduce_input_axes", [N("ReduceMean", ["x", "ax"], ["a"], keepdims=0), N("ReduceSum", ["x", "e"], ["b"]),
                           N("ReduceMax", ["x", "e"], ["c"], noop_with_empty_axes=1),
                           N("ReduceLogSum", ["p", "ax"], ["d"])],
     {**X4, "p": _t(2, 4, 7, 6, positive=True)}, {"ax": _i(-1, 1), "e": _i()},
     dict.fromkeys("abcd", T.FLOAT), 18),
    ("pad_constant_negative", [N("Pad", ["x", "p", "v"])], X4,
     {"p": _i(0, 1, -1, 2, 0, 0, 2, -2), "v": np.float32(0.5)}, None, 13),
    ("pad_reflect", [N("Pad", ["x", "p"], mode="reflect")], X4, {"p": _i(0, 0, 2, 1, 0, 0, 3, 4)}, None, 13),
    ("depth_to_space_dcr", [N("DepthToSpace", "x", blocksize=2)], {"x": _t(2, 8, 3, 5)}, {}, None, 13),
    ("depth_to_space_crd", [N("DepthToSpace", "x", blocksize=2, mode="CRD")], {"x": _t(2, 12, 3, 2)}, {}, None, 13),
    ("space_to_depth", [N("SpaceToDepth", "x", blocksize=2)], {"x": _t(2, 3, 4, 6)}, {}, None, 13),
    ("pad_edge_axes", [N("Pad", ["x", "p", "", "a"], mode="edge")], X4, {"p": _i(1, 2, 3, 1), "a": _i(1, -1)},
     None, 18),
    ("pad_wrap", [N("Pad", ["x", "p"], mode="wrap")], X4, {"p": _i(0, 1, 2, 1, 0, 0, 3, 2)}, None, 19),
    ("pad_attr", [N("Pad", "x", pads=[0, 0, 1, 2, 0, 0, 2, 1], value=1.5)], X4, {}, None, 10),
    ("resize_nearest_asym", [N("Resize", ["x", "", "s"], mode="nearest", coordinate_transformation_mode="asymmetric",
                               nearest_mode="floor")], X4, {"s": np.array([1, 1, 2, 2], np.float32)}, None, 13),
    ("resize_nearest_default_down", [N("Resize", ["x", "", "s"])], X4, {"s": np.array([1, 1, 0.6, 0.5], np.float32)},
     None, 13),
    ("resize_nearest_ceil_sizes", [N("Resize", ["x", "", "", "z"], nearest_mode="ceil",
                                     coordinate_transformation_mode="half_pixel")], X4, {"z": _i(2, 4, 11, 5)},
     None, 13),
    ("resize_linear_half_pixel", [N("Resize", ["x", "", "s"], mode="linear")], X4,
     {"s": np.array([1, 1, 1.5, 2.5], np.float32)}, None, 13),
    ("resize_linear_align_corners", [N("Resize", ["x", "", "", "z"], mode="linear",
                                       coordinate_transformation_mode="align_corners")], X4, {"z": _i(2, 4, 13, 9)},
     None, 13),
    ("resize_linear_pytorch_hp", [N("Resize", ["x", "r", "s"], mode="linear",
                                    coordinate_transformation_mode="pytorch_half_pixel")], X4,
     {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 0.5, 1 / 6], np.float32)}, None, 11),
    ("resize_cubic", [N("Resize", ["x", "", "s"], mode="cubic")], X4, {"s": np.array([1, 1, 2, 1.5], np.float32)},
     None, 13),
    ("resize_cubic_exclude", [N("Resize", ["x", "", "s"], mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1,
                                coordinate_transformation_mode="asymmetric")], X4,
     {"s": np.array([1, 1, 2, 0.5], np.float32)}, None, 13),
    ("resize_axes_hp_symmetric", [N("Resize", ["x", "", "s"], mode="linear", axes=[2, 3],
                                    coordinate_transformation_mode="half_pixel_symmetric")],
     X4, {"s": np.array([1.7, 0.8], np.float32)}, None, 19),
    ("upsample_opset9", [N("Upsample", ["x", "s"], mode="nearest")], X4, {"s": np.array([1, 1, 2, 3], np.float32)},
     None, 9),
    ("resize_opset10_nearest_down", [N("Resize", ["x", "s"])], X4, {"s": np.array([1, 1, 0.5, 0.7], np.float32)},
     None, 10),
    ("resize_opset10_linear", [N("Resize", ["x", "s"], mode="linear")], X4, {"s": np.array([1, 1, 2, 2], np.float32)},
     None, 10),
    ("softmax_old_axis", [N("Softmax", "x", ["a"], axis=1), N("LogSoftmax", "x", ["b"]), N("Hardmax", "x", ["c"])],
     X3, {}, dict.fromkeys("abc", T.FLOAT), 11),
    ("softmax_new_axis", [N("Softmax", "x", ["a"], axis=1), N("LogSoftmax", "x", ["b"]),
                          N("Hardmax", "x", ["c"], axis=0)], X3, {}, dict.fromkeys("abc", T.FLOAT), 13),
    ("flatten_transpose", [N("Flatten", "x", ["a"], axis=2), N("Transpose", "x", ["b"], perm=[0, 2, 3, 1]),
                           N("Transpose", "x", ["c"]), N("Flatten", "x", ["d"], axis=-1)],
     X4, {}, dict.fromkeys("abcd", T.FLOAT), 13),
    ("reshape_zero_minus_one", [N("Reshape", "xs")], X4, {"s": _i(0, -1, 3)}, None, 13),
    ("reshape_allowzero", [N("Reshape", "xs", allowzero=1)], X4, {"s": _i(4, 2, 42)}, None, 14),
    ("squeeze_unsqueeze_attrs", [N("Unsqueeze", "x", ["u"], axes=[0, -1]), N("Squeeze", "u", ["y"], axes=[0]),
                                 N("Squeeze", "u", ["z"])],
     {"x": _t(1, 3, 1, 4)}, {}, {"y": T.FLOAT, "z": T.FLOAT}, 11),
    ("squeeze_unsqueeze_inputs", [N("Unsqueeze", ["x", "a"], ["u"]), N("Squeeze", ["u", "b"])],
     {"x": _t(2, 3, 4)}, {"a": _i(1, 4), "b": _i(-1)}, None, 13),
    ("concat_split_attr", [N("Concat", ["x", "c"], ["k"], axis=1), N("Split", "k", ["y", "z"], axis=1, split=[2, 7])],
     X3, {"c": _t(2, 4, 9)}, {"y": T.FLOAT, "z": T.FLOAT}, 11),
    ("split_input_and_equal", [N("Split", ["x", "s"], ["a", "b"], axis=2), N("Split", "x", ["c", "d", "e"], axis=2)],
     X3, {"s": _i(4, 5)}, dict.fromkeys("abcde", T.FLOAT), 13),
    ("split_num_outputs", [N("Split", "x", ["a", "b"], axis=-1, num_outputs=2),
                           N("Split", "x", ["c", "d", "e"], axis=1, num_outputs=3)], X3, {},
     dict.fromkeys("abcde", T.FLOAT), 18),
    ("slice_steps", [N("Slice", ["x", "st", "en", "ax", "sp"])], X4,
     {"st": _i(-1, 1, 0), "en": _i(-(2**63), 100, -1), "ax": _i(2, 3, 1), "sp": _i(-2, 2, 1)}, None, 13),
    ("slice_attrs", [N("Slice", "x", starts=[1, -3], ends=[3, 1000], axes=[1, 2])], X4, {}, None, 9),
    ("shape_arith_reshape",
     [N("Shape", "x", ["s"]), N("Gather", ["s", "i0"], ["n"]), N("Shape", "x", ["hw"], start=2),
      N("ReduceProd", ["hw"], ["p"], keepdims=1), N("Div", ["p", "two"], ["q"]), N("Unsqueeze", ["n", "z"], ["nu"]),
      N("Concat", ["nu", "q", "m1"], ["shp"], axis=0), N("Reshape", ["x", "shp"], ["r"]),
      N("Cast", "p", ["pf"], to=T.FLOAT), N("Mul", ["r", "pf"], ["y"])],
     X4, {"i0": np.array(0, np.int64), "two": _i(2), "z": _i(0), "m1": _i(-1)}, None, 15),
    ("gather_2d_negative", [N("Gather", "xi", axis=1)], X4, {"i": _i(0, -1, 2, 1).reshape(2, 2)}, None, 13),
    ("gather_elements", [N("GatherElements", "xi", axis=1)], X3, {"i": np.tile(_i(0, -1, 3), (2, 1, 3))}, None, 13),
    ("constant_of_shape_expand",
     [N("Shape", "x", ["s"]), N("ConstantOfShape", "s", ["c"], value=helper.make_tensor("v", T.FLOAT, [1], [0.5])),
      N("Add", ["x", "c"], ["a"]), N("Expand", ["e", "s"], ["b"]), N("Add", ["a", "b"])],
     X4, {"e": _t(1, 1, 6)}, None, 13),
    ("range_where_equal",
     [N("Shape", "x", ["s"]), N("Gather", ["s", "i"], ["n"]), N("Range", ["z", "n", "one"], ["r"]),
      N("Cast", "r", ["rf"], to=T.FLOAT), N("Equal", ["r", "two"], ["eq"]), N("Where", ["eq", "x", "rf"])],
     X3, {"i": np.array(2, np.int64), "z": np.array(0, np.int64), "one": np.array(1, np.int64),
          "two": np.array(2, np.int64)}, None, 13),
    ("int_div_mod", [N("Shape", "x", ["s"]), N("Sub", ["s", "k"], ["d"]), N("Div", ["d", "q"], ["y"]),
                     N("Mod", ["d", "q"], ["m"]), N("Mod", ["d", "q"], ["f"], fmod=1)],
     X4, {"k": _i(5, 5, 5, 5), "q": _i(2, -3, 2, 4)}, {"y": T.INT64, "m": T.INT64, "f": T.INT64}, 13),
    ("tile_cumsum_argmax", [N("Tile", "xr", ["t"]), N("CumSum", ["x", "a"], ["c"], reverse=1, exclusive=1),
                            N("ArgMax", "x", ["m"], axis=1, keepdims=0), N("ArgMin", "x", ["n"], axis=-1)],
     X3, {"r": _i(1, 2, 1), "a": np.array(2, np.int64)}, {"t": T.FLOAT, "c": T.FLOAT, "m": T.INT64, "n": T.INT64}, 13),
    ("compare_logic", [N("Less", "xa", ["l"]), N("Greater", "xa", ["g"]), N("Or", "lg", ["o"]), N("Not", "o", ["n"]),
                       N("LessOrEqual", "xa", ["le"]), N("GreaterOrEqual", "xa", ["ge"]),
                       N("And", ["le", "ge"], ["an"]), N("Xor", ["an", "n"], ["y"])],
     X3, {"a": _t(9)}, {"y": T.BOOL}, 13),
    ("constant_node", [N("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]), N("Mul", "xc")],
     {"x": _t(2, 3)}, {}, None, 13),
]


def _op_model(nodes, inputs, consts, outputs, opset):
    outputs = outputs or {"y": T.FLOAT}
    graph = helper.make_graph(
        nodes, "ops",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
         for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, t, None) for k, t in outputs.items()],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("case", OPS, ids=[c[0] for c in OPS])
def test_single_ops_equal_onnxruntime(case):
    _, nodes, inputs, consts, outputs, opset = case
    model = _op_model(nodes, inputs, consts, outputs, opset)
    want = run(model, inputs)
    got = _np(Twin(Analysis(model))(inputs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        if w.dtype == np.float32:
            assert rel_err([g], [w]) <= 1e-5
        else:
            assert np.array_equal(g, w)
