"""Every zoo export is a valid ONNX model that runs in onnxruntime at any batch
size and reproduces its torch module."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import zoo

NAMES = [n for n, _ in zoo.zoo_models()]
CASES = [(n, e) for n in NAMES for e in zoo.EXPORTERS]


@pytest.fixture(scope="session")
def built_zoo(zoo_models):
    """The session's zoo (conftest), by (name, exporter)."""
    return {(m.name, m.exporter): m for m in zoo_models}


def _get(built_zoo, name, exporter) -> zoo.ZooModel:
    zm = built_zoo.get((name, exporter))
    if zm is None:
        pytest.skip(f"export failed: {zoo.EXPORT_FAILURES.get((name, exporter), '?')[:300]}")
    return zm


@pytest.mark.parametrize("name,exporter", CASES, ids=[f"{n}-{e}" for n, e in CASES])
def test_export_valid_and_matches_torch(built_zoo, name, exporter):
    zm = _get(built_zoo, name, exporter)
    model = onnx.load(str(zm.path))  # pulls in external data (dynamo: <path>.data) if any
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == [zm.input_name]
    assert [o.name for o in model.graph.output] == list(zm.output_names)
    for vi in (*model.graph.input, *model.graph.output):  # batch axis is symbolic
        assert vi.type.tensor_type.shape.dim[0].dim_param, f"{vi.name} has a static batch dim"

    sess = ort.InferenceSession(str(zm.path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        feed = zoo.random_input(zm, batch, seed=batch)
        got = sess.run(list(zm.output_names), feed)
        with torch.no_grad():
            ref = zm.torch_module(torch.from_numpy(feed[zm.input_name]))
        ref = [r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,))]
        assert len(got) == len(ref)
        for oname, g, r in zip(zm.output_names, got, ref):
            assert g.shape == r.shape and g.shape[0] == batch, (oname, g.shape, r.shape)
            scale = float(np.abs(r).max())
            err = float(np.abs(g - r).max())
            assert err <= 1e-4 * scale + 1e-6, f"{oname} batch={batch}: max err {err:.3g}, scale {scale:.3g}"
            if batch > 1:  # zoo sanity: outputs depend on the input, not just on biases
                assert float(r.std(0).mean()) > 1e-2 * scale, f"{oname}: output barely depends on input"


def test_all_exports_succeeded(built_zoo):
    # Not a hard requirement of the zoo (failures are skipped above), but any new
    # failure should be noticed and listed in the zoo's docs.
    assert not zoo.EXPORT_FAILURES, zoo.EXPORT_FAILURES


def test_zoo_is_deterministic():
    for name, factory in zoo.zoo_models():
        a, b = factory().state_dict(), factory().state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_random_input(built_zoo):
    zm = next(iter(built_zoo.values()))
    x = zoo.random_input(zm, 5, seed=7)
    assert list(x) == [zm.input_name] and x[zm.input_name].shape == (5, *zm.input_shape[1:])
    assert x[zm.input_name].dtype == np.float32
    np.testing.assert_array_equal(x[zm.input_name], zoo.random_input(zm, 5, seed=7)[zm.input_name])


def test_custom_op_graph(tmp_path):
    path = zoo.custom_op_graph(tmp_path / "custom.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)  # custom domains are not schema-checked
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert ("com.example", "MysteryOp") in ops
    assert [o for _, o in ops] == ["Conv", "Relu", "MysteryOp", "Conv", "Relu", "Conv",
                                   "GlobalAveragePool", "Flatten", "Gemm"]
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output)}
    assert shapes["c1"] == ["N", 8, 8, 8] and shapes["m"] == ["N", 8, 8, 8]
    assert shapes["c3"] == ["N", 6, 8, 8] and shapes["output"] == ["N", 10]
