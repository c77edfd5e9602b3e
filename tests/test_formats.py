"""Model variants users bring: fp16 weights, initializers that are also graph inputs, shared weights."""
import numpy as np
import onnx
import zoo
from helpers import rel_err, run
from onnx import TensorProto, helper, numpy_helper

from onnxprune import masked_reference, prune


def _zoo(zoo_models, name="basic_res", exporter="ts17"):
    z = next(z for z in zoo_models if z.name == name and z.exporter == exporter)
    return z, onnx.load(z.path)


def _to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    del m.graph.value_info[:]
    return m


def test_fp16_model_prunes_in_fp16(zoo_models):
    z, model = _zoo(zoo_models)
    m16 = _to_fp16(model)
    x = {"input": zoo.random_input(z, 3, 0)["input"].astype(np.float16)}
    cal = {"input": zoo.random_input(z, 40, 1)["input"].astype(np.float16)}
    # allocate=output runs the twin on the fp16 model with re-fitted weights given at run time
    for method, data, allocate in (("magnitude", None, "auto"), ("greedy-local", cal, "uniform"),
                                   ("greedy-local", cal, "output"), ("greedy-combined", cal, "uniform")):
        pruned, report = prune(m16, data, method=method, flops=0.5, allocate=allocate)
        assert report.allocate == ("uniform" if allocate == "auto" else allocate)
        assert {t.data_type for t in pruned.graph.initializer if len(t.dims) > 1} == {TensorProto.FLOAT16}
        out = run(pruned, x)
        assert out[0].dtype == np.float16
        ref = run(masked_reference(report), x)
        assert rel_err([o.astype(np.float32) for o in out], [o.astype(np.float32) for o in ref]) <= 1e-2
        assert report.macs_ratio < 0.55


def test_initializer_that_is_a_graph_input_stays_an_input_and_is_not_edited(zoo_models):
    z, model = _zoo(zoo_models)
    w = [t for t in model.graph.initializer if len(t.dims) == 4][1]
    model.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, list(w.dims)))
    pruned, report = prune(model, method="magnitude", flops=0.5)
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    kept = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert kept[w.name] == list(w.dims)
    assert any("computed at run time" in r for g in report.groups for r in g.reasons)
    onnx.checker.check_model(pruned, full_check=True)
    x = zoo.random_input(z, 2, 0)
    assert rel_err(run(pruned, x), run(masked_reference(report), x)) <= 1e-4


def test_weight_shared_by_two_convs():
    """Two convs read one weight tensor; each gets its own pruned copy."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in
             (("w0", (6, 3, 3, 3)), ("ws", (6, 6, 3, 3)), ("wo", (4, 6, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1] * 4, name="c0"),
             helper.make_node("Relu", ["a"], ["ra"], name="r0"),
             helper.make_node("Conv", ["ra", "ws"], ["b"], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["b"], ["rb"], name="r1"),
             helper.make_node("Conv", ["rb", "ws"], ["c"], pads=[1] * 4, name="c2"),
             helper.make_node("Relu", ["c"], ["rc"], name="r2"),
             helper.make_node("Conv", ["rc", "wo"], ["y"], name="c3")]
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    pruned, report = prune(model, method="random", keep_ratio=0.5, seed=2)
    x = {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}
    assert rel_err(run(pruned, x), run(masked_reference(report), x)) <= 1e-4
    users = [n for n in pruned.graph.node if n.op_type == "Conv" and n.name in ("c1", "c2")]
    assert users[0].input[1] != users[1].input[1]
