"""onnxprune.finetune: lr=0 is the identity, the written-back ONNX computes what the trained twin
computes, training lowers the loss, and weights stored as Constant nodes or shared through Identity
nodes are written back consistently (the graph itself never changes)."""
import io

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import run
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from onnxprune.analysis import Analysis
from onnxprune.finetune import finetune, trainable_tensors


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        x = F.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


def _torch_model() -> onnx.ModelProto:
    torch.manual_seed(0)
    net = _Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 2, 8, 8), buf, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, do_constant_folding=False)
    return onnx.load_from_string(buf.getvalue())


def _helper_model() -> onnx.ModelProto:
    """MatMul + Add bias with the weight in a Constant node, and one initializer shared by two Gemms
    through Identity nodes (as torch.onnx.export deduplicates equal weights)."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((5, 6)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(6).astype(np.float32) * 0.1
    shared = rng.standard_normal((6, 6)).astype(np.float32) * 0.4
    w3 = rng.standard_normal((3, 6)).astype(np.float32) * 0.5
    nodes = [
        helper.make_node("Constant", [], ["w1"], value=numpy_helper.from_array(w1, "w1v")),
        helper.make_node("MatMul", ["x", "w1"], ["h1"]),
        helper.make_node("Add", ["h1", "b1"], ["h1b"]),
        helper.make_node("Relu", ["h1b"], ["a1"]),
        helper.make_node("Identity", ["shared"], ["wa"]),
        helper.make_node("Identity", ["shared"], ["wb"]),
        helper.make_node("Gemm", ["a1", "wa"], ["h2"], transB=1),
        helper.make_node("Relu", ["h2"], ["a2"]),
        helper.make_node("Gemm", ["a2", "wb"], ["h3"], transB=1),
        helper.make_node("Relu", ["h3"], ["a3"]),
        helper.make_node("Gemm", ["a3", "w3"], ["y"], transB=1),
    ]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", T.FLOAT, ["b", 5])],
                          [helper.make_tensor_value_info("y", T.FLOAT, ["b", 3])],
                          [numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(shared, "shared"),
                           numpy_helper.from_array(w3, "w3")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _data(model, n=96, seed=1):
    """Inputs and labels that a tiny model can learn: the label is a fixed function of the input."""
    rng = np.random.default_rng(seed)
    shape = [n] + [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(n, -1)
    y = (flat[:, :flat.shape[1] // 2].sum(1) > 0).astype(np.int64) + (flat[:, 0] > 1).astype(np.int64)
    return x, y


def _loss(model, x, y) -> float:
    logits = run(model, {model.graph.input[0].name: x})[0]
    return float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))


def _weights(model) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t).copy()
    return out


def _structure(model):
    return ([(n.op_type, list(n.input), list(n.output), n.name) for n in model.graph.node],
            [(t.name, t.data_type, list(t.dims)) for t in model.graph.initializer],
            model.graph.input, model.graph.output, list(model.opset_import))


MODELS = {"torch_conv": _torch_model, "helper_mlp": _helper_model}


@pytest.mark.parametrize("name", MODELS)
def test_lr_zero_is_identity(name):
    model = MODELS[name]()
    before = model.SerializeToString()
    x, y = _data(model)
    tuned = finetune(model, x, y, epochs=2, lr=0.0, batch_size=16, device="cpu")
    assert model.SerializeToString() == before, "the input model was modified"
    np.testing.assert_array_equal(run(tuned, {model.graph.input[0].name: x})[0],
                                  run(model, {model.graph.input[0].name: x})[0])
    for k, v in _weights(model).items():
        np.testing.assert_array_equal(_weights(tuned)[k], v)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_export_equals_twin_and_loss_drops(name, optimizer):
    model = MODELS[name]()
    x, y = _data(model)
    losses = []
    lr = 0.05 if optimizer == "sgd" else 0.01
    tuned, twin = finetune(model, x, y, epochs=8, lr=lr, batch_size=16, seed=3, optimizer=optimizer,
                           device="cpu", losses=losses, return_twin=True)
    onnx.checker.check_model(tuned, full_check=True)
    assert _structure(tuned) == _structure(model), "the graph changed"
    changed = [k for k, v in _weights(model).items() if not np.array_equal(_weights(tuned)[k], v)]
    assert changed, "no weight changed"
    feed = {model.graph.input[0].name: x}
    with torch.no_grad():
        ref = twin({model.graph.input[0].name: torch.from_numpy(x)})[0].numpy()
    got = run(tuned, feed)[0]
    assert np.abs(got - ref).max() <= 1e-4
    assert _loss(tuned, x, y) < 0.9 * _loss(model, x, y)
    assert len(losses) == 8 * (len(y) // 16)
    assert np.mean(losses[-6:]) < np.mean(losses[:6])


def test_storage_kinds_written_back():
    model = _helper_model()
    names = set(trainable_tensors(Analysis(model)))
    # MatMul weight (a Constant node), its Add bias, both Identity views of "shared", and w3
    assert names == {"w1", "b1", "wa", "wb", "w3"}
    x, y = _data(model)
    tuned = finetune(model, x, y, epochs=4, lr=0.05, batch_size=16, device="cpu")
    before, after = _weights(model), _weights(tuned)
    for k in ("w1", "b1", "shared", "w3"):
        assert not np.array_equal(before[k], after[k]), f"{k} was not trained"
    assert [n.op_type for n in tuned.graph.node].count("Identity") == 2  # still shared through Identity


def test_frozen_batchnorm_and_determinism():
    model = _torch_model()
    x, y = _data(model)
    noise = lambda v: v + 0.1 * torch.randn_like(v)  # noqa: E731  (draws from the global RNG)
    state = torch.random.get_rng_state()
    a = finetune(model, x, y, epochs=2, lr=0.05, batch_size=16, seed=7, device="cpu", augment=noise)
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG state leaked"
    b = finetune(model, x, y, epochs=2, lr=0.05, batch_size=16, seed=7, device="cpu", augment=noise)
    assert a.SerializeToString() == b.SerializeToString()
    c = finetune(model, x, y, epochs=2, lr=0.05, batch_size=16, seed=8, device="cpu", augment=noise)
    assert a.SerializeToString() != c.SerializeToString()
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    wa, w0 = _weights(a), _weights(model)
    for t in bn.input[1:]:
        np.testing.assert_array_equal(wa[t], w0[t])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_export():
    model = _torch_model()
    x, y = _data(model)
    tuned, twin = finetune(model, x, y, epochs=2, lr=0.05, batch_size=16, device="cuda", return_twin=True)
    with torch.no_grad():
        ref = twin({"x": torch.from_numpy(x)})[0].cpu().numpy()
    assert np.abs(run(tuned, {"x": x})[0] - ref).max() <= 1e-4


def test_pruned_model_recovers():
    """The use it exists for: a magnitude-pruned model (no re-fit) gets its loss back down, and the
    finetuned file is the pruned graph with new weight values."""
    from onnxprune import prune
    model = _torch_model()
    x, y = _data(model, n=128)
    pruned, _ = prune(model, None, method="magnitude", refit="none", keep_ratio=0.5)
    tuned, twin = finetune(pruned, x, y, epochs=10, lr=0.05, batch_size=16, device="cpu", return_twin=True)
    assert _structure(tuned) == _structure(pruned)
    with torch.no_grad():
        ref = twin({"x": torch.from_numpy(x)})[0].numpy()
    assert np.abs(run(tuned, {"x": x})[0] - ref).max() <= 1e-4
    assert _loss(tuned, x, y) < 0.9 * _loss(pruned, x, y)
