"""Torch-Pruning 1.6.1 as the baseline: rebuild a torch module from the ONNX weights, prune it with a
uniform ratio bisected to a MACs target, export it back to ONNX, check it against ONNX Runtime."""
from __future__ import annotations

import copy
import io

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F


def _fuse_conv_bn(module: nn.Module) -> nn.Module:
    """In every nn.Sequential, Conv2d followed by BatchNorm2d becomes Conv2d(bias=True) + Identity."""
    for child in module.children():
        _fuse_conv_bn(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, bias=True)
                module._modules[a], module._modules[b] = fused, nn.Identity()
    return module


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    order, hooks = [], []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, i, o: order.append(mod)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return order


def build_torch(name: str, onnx_path: str) -> nn.Module:
    """The module of models/<name>.py, BN fused, with the weights of the ONNX at `onnx_path` (eval mode)."""
    import importlib
    model = _fuse_conv_bn(importlib.import_module(f"models.{name}").build_model()).eval()
    proto = onnx.load(onnx_path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    layers = _execution_order(model, torch.zeros(1, 1, 28, 28))
    if len(nodes) != len(layers):
        raise RuntimeError(f"{name}: {len(nodes)} ONNX Conv/Gemm nodes but {len(layers)} torch layers")
    with torch.no_grad():
        for node, layer in zip(nodes, layers):
            w = inits[node.input[1]]
            if node.op_type == "Gemm":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                if not attrs.get("transB", 0):
                    w = w.T
            if tuple(w.shape) != tuple(layer.weight.shape):
                raise RuntimeError(f"{name}: node {node.name} weight {w.shape} vs torch {tuple(layer.weight.shape)}")
            layer.weight.copy_(torch.from_numpy(np.array(w, dtype=np.float32)))
            if len(node.input) > 2 and node.input[2]:
                layer.bias.copy_(torch.from_numpy(np.array(inits[node.input[2]], dtype=np.float32)))
            else:
                layer.bias.zero_()
    return model


def torch_logits(model: nn.Module, x: np.ndarray, bs: int = 500) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + bs])).numpy() for i in range(0, len(x), bs)])


def check_against_ort(model: nn.Module, onnx_path, x: np.ndarray, tol: float = 1e-4) -> float:
    from onnxprune.report.evaluate import logits, session
    ref = logits(session(onnx_path, threads=1), {"input": x})
    err = float(np.abs(torch_logits(model, x) - ref).max())
    if not err <= tol:
        raise AssertionError(f"{onnx_path}: torch vs ONNX Runtime max abs err {err:.3g} > {tol}")
    return err


def export_proto(model: nn.Module, example: torch.Tensor | None = None) -> onnx.ModelProto:
    """TorchScript export (as models/train_common.export_onnx): opset 17, input/logits, dynamic batch."""
    buf = io.BytesIO()
    torch.onnx.export(model.eval(), _example(example), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


# ------------------------------------------------------------------------------------------ Torch-Pruning

def _example(example: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros(1, 1, 28, 28) if example is None else example  # Fashion-MNIST by default


def taylor_grads(base: nn.Module, calib, batch_size: int | None = None) -> list[torch.Tensor]:
    """Gradients of the mean cross-entropy on calib = (x, y) for base's parameters, in eval mode (base untouched).

    Accumulated over batches of batch_size (default: one batch), each batch's mean loss weighted by its
    share of the samples, so the result is the gradient of the mean over all samples."""
    model = copy.deepcopy(base).eval()  # eval: BN uses its running statistics, Dropout is off
    x, y = calib
    bs = batch_size or len(x)
    for i in range(0, len(x), bs):
        xb, yb = torch.from_numpy(x[i:i + bs]), torch.from_numpy(y[i:i + bs])
        (F.cross_entropy(model(xb), yb) * (len(xb) / len(x))).backward()
    return [p.grad for p in model.parameters()]


def _prune_once(base: nn.Module, importance: str, ratio: float, grads=None, example=None) -> nn.Module:
    """One Torch-Pruning run on a copy of base; grads (taylor_grads of base) feed TaylorImportance."""
    import torch_pruning as tp
    model = copy.deepcopy(base)
    imp = tp.importance.MagnitudeImportance(p=1) if importance == "l1" else tp.importance.TaylorImportance()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.BasePruner(model, _example(example), importance=imp, pruning_ratio=ratio,
                                  ignored_layers=[last], global_pruning=False)
    if importance == "taylor":
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def _macs(model: nn.Module, example: torch.Tensor | None = None) -> float:
    import torch_pruning as tp
    macs, _ = tp.utils.count_ops_and_params(model, _example(example))
    return float(macs)


def prune_tp(base: nn.Module, importance: str, target: float, calib, tol: float = 0.004, iters: int = 30,
             example: torch.Tensor | None = None, grads=None):
    """Bisection on one uniform pruning ratio so that TP's MACs ratio reaches `target`.

    Returns (pruned module, ratio, tp MACs ratio). Counts are discrete: the ratio whose MACs are
    closest to the target among those tried is kept. "taylor" uses `grads` (taylor_grads of base)
    or, when None, computes them from calib = (x, y) in one batch; `example` defaults to 1x1x28x28."""
    if importance == "taylor" and grads is None:
        grads = taylor_grads(base, calib)
    m0 = _macs(base, example)
    lo, hi, best = 0.0, 0.99, None
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        pruned = _prune_once(base, importance, mid, grads, example)
        r = _macs(pruned, example) / m0
        if best is None or abs(r - target) < abs(best[2] - target):
            best = (pruned, mid, r)
        if abs(r - target) <= tol:
            break
        lo, hi = (mid, hi) if r > target else (lo, mid)
    return best
