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
import os
import time

import numpy as np
import onnx
import torch
import torch.nn as nn

from bench.lib.common import format_table, loadavg, machine_info, write_json
from bench.lib.fmnist import CALIB, MODELS, TEST
from bench.lib.torch_pruning import build_torch, check_against_ort, export_proto, prune_tp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = (0.7, 0.5, 0.3)
IMPORTANCES = ("l1", "taylor")


# ------------------------------------------------------------------------- torch model with the shipped weights

def run(name: str, levels, importances, save_dir=None) -> list[dict]:
    from onnxprune.analysis.cost import model_macs
    from onnxprune.report.evaluate import compare
    with np.load(TEST) as z:
        xt = z["input"]
    with np.load(CALIB) as z:
        calib = (z["input"], z["labels"].astype(np.int64))
    base = build_torch(name, MODELS[name])
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
