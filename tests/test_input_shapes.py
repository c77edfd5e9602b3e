"""MACs with symbolic input shapes (issue 16, item 3): a layer whose size is symbolic is never counted as 0
MACs; its MACs come from `--input-shape NAME=D0,D1,...` (or the first calibration batch), and a MACs target
is refused, naming the input that needs a shape, while any layer's MACs are unknown. The expected MACs are
computed here from the layer sizes, or by analysing a static export of the same network."""
import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import load_in_ort, rel_err, run_file
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.options import OptionError


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _conv_net(path):
    """x[N, 3, H, W] -> Conv(8, 3x3, pad 1) -> Relu -> Conv(16, 3x3, stride 2, pad 1) -> Relu -> {Conv(4, 1x1) as
    output 'head' [N, 4, h, w]; GAP -> Flatten -> Gemm(10) as output 'y'}."""
    rng = np.random.default_rng(0)

    def w(n, *s):
        return numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
    inits = [w("w1", 8, 3, 3, 3), w("w2", 16, 8, 3, 3), w("w3", 4, 16, 1, 1), w("fc", 10, 16), w("fcb", 10)]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], pads=[1] * 4, strides=[2, 2], name="c2"),
             helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Conv", ["rb", "w3"], ["head"], name="c3"),
             helper.make_node("GlobalAveragePool", ["rb"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1, name="fc")]
    g = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
                           helper.make_tensor_value_info("head", TensorProto.FLOAT, ["N", 4, "h", "w"])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    load_in_ort(path)
    return path


def _conv_net_macs(h, w):
    """MACs per sample of `_conv_net` at H x W, from the layer sizes."""
    h2, w2 = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # 3x3, stride 2, pad 1
    return h * w * 8 * 3 * 9 + h2 * w2 * 16 * 8 * 9 + h2 * w2 * 4 * 16 + 16 * 10


def test_symbolic_sizes_are_unknown_not_zero_and_input_shape_sizes_them(tmp_path):
    model = _conv_net(tmp_path / "dyn.onnx")
    res = invoke("analyze", model, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {u["node"] for u in data["unknown_macs"]} == {"c1", "c2", "c3"}
    assert data["macs"] == 16 * 10  # only the Gemm's size is known
    table = invoke("analyze", model).stdout
    assert "c1" in table and "'x' [N, 3, H, W]" in table and "--input-shape" in table
    for spec, (h, w) in (("x=1,3,32,32", (32, 32)), ("x:1,3,20,36", (20, 36)), ("1,3,17,9", (17, 9)),
                         ("x:[1,3,8,8]", (8, 8))):
        res = invoke("analyze", model, "--json", "--input-shape", spec)
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data["unknown_macs"] == [] and data["macs"] == _conv_net_macs(h, w), spec
    assert onnxprune.analyze(str(model), input_shapes={"x": (4, 3, 12, 12)}).total_macs == _conv_net_macs(12, 12), \
        "MACs are per sample: the batch dimension does not count"


def test_macs_target_refused_without_shapes_and_reached_with_them(tmp_path):
    model = _conv_net(tmp_path / "dyn.onnx")
    out, rep, masked = tmp_path / "o.onnx", tmp_path / "r.json", tmp_path / "m.onnx"
    res = invoke("prune", model, "-o", out, "--flops", "0.5", "--method", "magnitude")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and not out.exists(), res.stderr
    assert lines[0].startswith("onnxprune: error: --input-shape: ") and "input 'x'" in lines[0], lines[0]
    with pytest.raises(OptionError, match="input 'x'"):
        onnxprune.prune(str(model), flops=0.5, method="magnitude")
    res = invoke("prune", model, "-o", out, "--flops", "0.5", "--method", "magnitude", "--input-shape", "x=1,3,32,32",
                 "--report", rep, "--masked-reference", masked)
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    assert r["macs_before"] == _conv_net_macs(32, 32) and r["macs_unknown"] == []
    assert abs(r["macs_after"] / r["macs_before"] - 0.5) <= 0.02 * 0.5
    # the written model keeps its symbolic dims: it runs at other sizes and computes its masked reference
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    for h, w in ((32, 32), (24, 40)):
        x = {"x": np.random.default_rng(h).standard_normal((2, 3, h, w)).astype(np.float32)}
        assert rel_err(run_file(out, x), run_file(masked, x)) <= 1e-4


def test_keep_ratio_prunes_without_shapes_and_says_what_is_not_counted(tmp_path):
    model = _conv_net(tmp_path / "dyn.onnx")
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    res = invoke("prune", model, "-o", out, "--keep-ratio", "0.5", "--method", "magnitude", "--report", rep)
    assert res.exit_code == 0, res.output
    assert "3 layers of unknown size not counted" in res.stdout
    assert sorted(json.loads(rep.read_text())["macs_unknown"]) == ["c1", "c2", "c3"]
    run_file(out, {"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_calibration_data_gives_the_shapes(tmp_path):
    model = _conv_net(tmp_path / "dyn.onnx")
    np.savez(tmp_path / "c.npz", x=np.random.default_rng(0).standard_normal((24, 3, 20, 28)).astype(np.float32))
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    res = invoke("prune", model, "-o", out, "--flops", "0.5", "--calib", tmp_path / "c.npz", "--report", rep, "-q")
    assert res.exit_code == 0, res.output
    r = json.loads(rep.read_text())
    assert r["macs_before"] == _conv_net_macs(20, 28) and r["macs_unknown"] == []
    assert abs(r["macs_after"] / r["macs_before"] - 0.5) <= 0.02 * 0.5
    run_file(out, {"x": np.zeros((1, 3, 20, 28), np.float32)})


def _matmul_net(path):
    """x[N, T, 16] -> MatMul(16 x 32) -> Relu -> MatMul(32 x 8): rows of a sequence of symbolic length T."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    g = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 8])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    load_in_ort(path)
    return path


def test_matmul_rows_of_symbolic_length(tmp_path):
    model = _matmul_net(tmp_path / "seq.onnx")
    a = onnxprune.analyze(str(model))
    assert {c.node for c in a.unknown_costs} == {"mm1", "mm2"} and a.total_macs == 0
    assert onnxprune.analyze(str(model), input_shapes={"x": [1, 10, 16]}).total_macs == 10 * 16 * 32 + 10 * 32 * 8


@pytest.mark.parametrize("name", ["basic_res", "bottleneck", "inverted_res", "mbv3_se", "concat", "grouped",
                                  "shuffle", "split"])
def test_dynamic_spatial_export_has_the_static_exports_macs(zoo_models, tmp_path, name):
    """A zoo network exported by torch with dynamic H and W, analysed with --input-shape at the zoo's size,
    has the MACs of the zoo's static export (the static analysis is the independent count)."""
    z = next(z for z in zoo_models if z.name == name and z.exporter == "ts17")
    path = tmp_path / f"{name}_dynamic_hw.onnx"
    x = torch.zeros((2,) + tuple(z.input_shape[1:]))
    torch.onnx.export(z.torch_module.eval(), (x,), str(path), dynamo=False, opset_version=17,
                      input_names=[z.input_name], output_names=["output"],
                      dynamic_axes={z.input_name: {0: "N", 2: "H", 3: "W"}, "output": {0: "N"}})
    load_in_ort(path).run(None, {z.input_name: np.zeros((1, 3, 24, 20), np.float32)})  # runs at another size
    static = onnxprune.analyze(str(z.path))
    assert not static.unknown_costs
    dynamic = onnxprune.analyze(str(path))
    assert dynamic.unknown_costs, "H and W are symbolic: the convolutions' MACs are unknown"
    shape = {z.input_name: (1,) + tuple(z.input_shape[1:])}
    sized = onnxprune.analyze(str(path), input_shapes=shape)
    assert not sized.unknown_costs and sized.total_macs == static.total_macs


def test_macs_target_names_the_op_where_shape_inference_stops(tmp_path):
    """Static input shapes, but an op of a custom domain that ONNX cannot size sits before the convolutions:
    the refusal names that op, not --input-shape (giving shapes cannot help), and writes nothing."""
    path = tmp_path / "custom.onnx"
    m = onnx.load(str(_conv_net(tmp_path / "dyn.onnx")))
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 16
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 16
    m.graph.node.insert(0, helper.make_node("Scale", ["x0"], ["x"], domain="com.example", name="prep"))
    m.graph.input[0].name = "x0"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save(m, str(path))
    out = tmp_path / "o.onnx"
    res = invoke("prune", path, "-o", out, "--flops", "0.5", "--method", "magnitude")
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and not out.exists(), res.stderr
    assert "shape inference stops at Scale 'prep' of domain 'com.example'" in lines[0], lines[0]
    assert "--input-shape" not in lines[0], lines[0]
    table = invoke("analyze", path).stdout
    assert "stops at Scale 'prep'" in table and "--input-shape" not in table, table
    # the same network without the custom op: every layer is sized, nothing to name
    assert onnxprune.analyze(str(tmp_path / "dyn.onnx")).shape_inference_stop() is None
