"""A model over protobuf's 2 GB limit, its weights in external data (issue 7): analyze, prune and save
must work without ever serialising the whole model into one protobuf, and the pruned model (also saved
with external data) must compute the masked reference. Slow: it writes and reads about 2.3 GB."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main

pytestmark = pytest.mark.slow

WIDTH = 14_000  # three WIDTH x WIDTH float32 matrices: 3 x 784 MB


def _build(path):
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(3):
        w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.sqrt(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(np.full(WIDTH, 0.01 * i, np.float32), f"b{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    head = rng.standard_normal((WIDTH, 10)).astype(np.float32)
    inits.append(numpy_helper.from_array(head, "head"))
    nodes.append(helper.make_node("MatMul", [x, "head"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return model


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_model_over_2gb_prunes_with_external_data(tmp_path):
    src = tmp_path / "big.onnx"
    _build(src)
    assert (tmp_path / "big.onnx.data").stat().st_size > 2**31
    out, masked = tmp_path / "out" / "pruned.onnx", tmp_path / "out" / "masked.onnx"
    out.parent.mkdir()
    res = CliRunner().invoke(main, ["prune", str(src), "-o", str(out), "--method", "magnitude", "--keep-ratio", "0.5",
                                    "--masked-reference", str(masked)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "pruned.onnx.data").exists(), "an external-data input gives an external-data output"
    x = np.random.default_rng(1).standard_normal((2, WIDTH)).astype(np.float32)
    got, want = _run(out, x), _run(masked, x)
    assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1e-6)
    sizes = {t.name: list(t.dims) for t in onnx.load(str(out), load_external_data=False).graph.initializer}
    assert sizes["w1"] == [WIDTH // 2, WIDTH // 2]


def test_in_memory_model_over_2gb_gets_a_session(tmp_path):
    """Taps and evaluation build ONNX Runtime sessions from in-memory models: over 2 GB they go through
    a temporary external-data file."""
    from onnxprune.report.evaluate import session
    src = tmp_path / "big.onnx"
    _build(src)
    x = np.random.default_rng(2).standard_normal((2, WIDTH)).astype(np.float32)
    got = session(onnx.load(str(src))).run(None, {"x": x})[0]
    assert np.array_equal(got, _run(src, x))
