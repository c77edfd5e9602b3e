"""Torch-Pruning 1.6.1 on the two Fashion-MNIST models, beside onnxprune's rows (issue 6).

    pip install -e '.[bench]'          # torch-pruning==1.6.1
    python bench/torch_pruning_baseline.py [--levels 0.7,0.5,0.3] [--out bench/results/torch_pruning.json]

1. The torch modules of models/fmnist_resnet.py and models/fmnist_mobilenet.py are built with every
   Conv+BatchNorm pair fused into one Conv with a bias (the shipped ONNX has BN folded and no torch
   checkpoint exists), and the ONNX initializers are loaded into them in Conv/Gemm execution order.
   torch's output must equal ONNX Runtime's on the test images (max abs error <= 1e-4).
2. Torch-Pruning (BasePruner, local pruning, the final Linear ignored) with
   MagnitudeImportance(p=1) ("torch-pruning-l1": group L1 norm, TP's default mean reduction and
   normaliser) and TaylorImportance ("torch-pruning-taylor": gradients of the cross-entropy on the
   512 calibration images of models/fmnist_calib.npz with their labels). One pruning ratio for every
   layer, found by bisection so that the MACs (tp.utils.count_ops_and_params) reach each level
   (0.7, 0.5, 0.3 of the original). No finetune.
3. Each pruned module is exported to ONNX (TorchScript exporter, opset 17, input "input", output
   "logits", dynamic batch) and evaluated on models/fmnist_test.npz exactly as bench/quality.py
   does (onnxprune.report.evaluate.compare against the original ONNX). macs_ratio is onnxprune's count on
   the exported ONNX (the definition quality.json uses); tp_macs_ratio is Torch-Pruning's count.

Rows in the schema of bench/results/quality.json's results go to --out. The pruned ONNX models can
be saved with --save-dir (bench/finetune.py uses `prune_tp` directly).
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "models"))

from bench.common import format_table, loadavg, machine_info, write_json  # noqa: E402

MODELS = {"fmnist_resnet": "models/fmnist_resnet.onnx", "fmnist_mobilenet": "models/fmnist_mobilenet.onnx"}
CALIB, TEST = "models/fmnist_calib.npz", "models/fmnist_test.npz"
LEVELS = (0.7, 0.5, 0.3)
IMPORTANCES = ("l1", "taylor")


# ------------------------------------------------------------------------- torch model with the shipped weights

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


def build_torch(name: str, onnx_path: str | None = None) -> nn.Module:
    """The module of models/<name>.py, BN fused, with the weights of the shipped ONNX (eval mode)."""
    import importlib
    model = _fuse_conv_bn(importlib.import_module(name).build_model()).eval()
    proto = onnx.load(onnx_path or MODELS[name])
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


def run(name: str, levels, importances, save_dir=None) -> list[dict]:
    from onnxprune.analysis.cost import model_macs
    from onnxprune.report.evaluate import compare
    with np.load(TEST) as z:
        xt = z["input"]
    with np.load(CALIB) as z:
        calib = (z["input"], z["labels"].astype(np.int64))
    base = build_torch(name)
    err = check_against_ort(base, MODELS[name], xt)
    print(f"{name}: torch (BN fused, ONNX weights) vs ORT max abs err {err:.2e}", flush=True)
    macs0 = model_macs(onnx.load(MODELS[name]))
    out = []
    for flops in levels:
        for imp in importances:
            row = f"torch-pruning-{imp}"
            t0, c0 = time.perf_counter(), time.process_time()
            pruned, ratio, tp_ratio = prune_tp(base, imp, flops, calib)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            proto = export_proto(pruned)
            if save_dir:
                os.makedirs(save_dir, exist_ok=True)
                onnx.save(proto, os.path.join(save_dir, f"{name}_{row}_{flops}.onnx"))
            params0 = sum(p.numel() for p in base.parameters())
            rec = {"model": name, "row": row, "method": row, "refit": "none", "allocate": "uniform",
                   "flops": flops, "calibrated": imp == "taylor", "prune_wall_s": wall, "prune_cpu_s": cpu,
                   "macs_ratio": model_macs(proto) / macs0, "tp_macs_ratio": tp_ratio,
                   "params_ratio": sum(p.numel() for p in pruned.parameters()) / params0,
                   "pruning_ratio": ratio, "torch_vs_ort_err": err,
                   **compare(MODELS[name], proto, TEST),
                   "kept": {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)}}
            print(f"  {name} {flops} {row:<22} ratio {ratio:.4f} macs {rec['macs_ratio']:.3f} (tp {tp_ratio:.3f}) "
                  f"acc {rec['accuracy_pruned']:.4f} agree {rec['agreement']:.4f} {wall:.1f}s", flush=True)
            out.append(rec)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default="bench/results/torch_pruning.json")
    ap.add_argument("--save-dir", default=None, help="also write the pruned ONNX models here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from importlib.metadata import version

    import torch_pruning  # noqa: F401  (fail early when the bench extra is missing)
    info = machine_info("Torch-Pruning on CPU, shared machine: wall times are noisy")
    info.update(torch=torch.__version__, torch_pruning=version("torch-pruning"))
    levels = tuple(float(v) for v in args.levels.split(","))
    t0, results = time.perf_counter(), []
    for name in args.models.split(","):
        results += run(name, levels, IMPORTANCES, args.save_dir)
    total = time.perf_counter() - t0
    print("\n" + format_table(
        ["model", "MACs tgt", "row", "ratio", "MACs", "MACs (tp)", "params", "acc", "Δacc", "agree", "KL", "wall s"],
        [[r["model"], r["flops"], r["row"], f"{r['pruning_ratio']:.4f}", f"{r['macs_ratio']:.3f}",
          f"{r['tp_macs_ratio']:.3f}", f"{r['params_ratio']:.3f}", f"{r['accuracy_pruned']:.4f}",
          f"{100 * (r['accuracy_pruned'] - r['accuracy_original']):+.2f}", f"{r['agreement']:.4f}",
          f"{r['kl']:.4f}", f"{r['prune_wall_s']:.1f}"] for r in results]))
    info["loadavg_end"] = loadavg()
    write_json(args.out, {"machine": info, "total_s": total, "calibration": CALIB, "test": TEST,
               "notes": ["Torch-Pruning BasePruner, local (uniform) pruning ratio by bisection on TP's MACs, "
                         "final Linear ignored, no finetune; macs_ratio counted by onnxprune on the exported "
                         "ONNX, tp_macs_ratio by tp.utils.count_ops_and_params"],
               "results": results}, total)


if __name__ == "__main__":
    main()
