"""Torch-Pruning 1.6.1 on the ImageNet MobileNetV2, measured like the quality rows of bench/imagenet.py.

    pip install -e '.[bench]'          # torch-pruning==1.6.1
    python bench/torch_pruning_imagenet.py [--levels 0.9,0.7,0.5,0.3] [--calib 512] [--eval 500] [--eval-in 300]
                                           [--threads 2] [--out bench/results/torch_pruning_imagenet.json]

1. models/mobilenetv2.MobileNetV2 with torchvision's weights (models/imagenet_weights.weights_path(),
   load_state_dict strict, BatchNorm kept, eval mode: Torch-Pruning prunes BN with its conv).  Its
   logits must equal ONNX Runtime's on the exported model (bench.lib.imagenet.model_path()) on a few
   evaluation crops (max abs error <= 1e-3).
2. Torch-Pruning (BasePruner, local pruning, the final Linear ignored, example input 1x3x224x224) with
   MagnitudeImportance(p=1) ("torch-pruning-l1") and TaylorImportance ("torch-pruning-taylor").
   There are no labels: Taylor's gradients are those of the cross-entropy against the ORIGINAL
   model's top-1 predictions on the --calib calibration crops (seed CALIB_SEED, as bench/imagenet.py),
   accumulated in batches of 32 in eval mode, computed once (they depend only on the original model)
   and counted in every Taylor row's prune time.  One pruning ratio for every layer, found by
   bisection (bench/torch_pruning_baseline.prune_tp) so that TP's MACs reach each level.  No finetune.
3. Each pruned module is exported to ONNX (TorchScript exporter, opset 17, input "input", output
   "logits", dynamic batch).  macs_ratio is onnxprune's count on the exported ONNX relative to the
   original ONNX (tp_macs_ratio: Torch-Pruning's count); quality is bench.lib.imagenet.both against the
   original ONNX model's logits: --eval crops of the evaluation photos (seed EVAL_SEED) and, prefix
   in_, --eval-in unseen crops of the calibration photos (seed IN_SEED).

Rows in the schema of bench/results/imagenet.json's quality results go to --out.
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
from bench.lib.imagenet import CALIB_SEED, EVAL_SEED, IN_SEED, both, logits, model_path, photo_checks
from bench.lib.torch_pruning import check_against_ort, export_proto, prune_tp, taylor_grads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "torch_pruning_imagenet.json")
LEVELS = (0.9, 0.7, 0.5, 0.3)
IMPORTANCES = ("l1", "taylor")
EXAMPLE = (1, 3, 224, 224)
GRAD_BATCH = 32


def build_torch() -> nn.Module:
    """MobileNetV2 with the torchvision ImageNet weights (strict), BN kept, eval mode."""
    from models.build_mobilenetv2_224 import build
    from models.imagenet_weights import weights_path
    return build(weights_path()).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--calib", type=int, default=512, help="calibration crops for Taylor's gradients (512)")
    ap.add_argument("--eval", type=int, default=500, help="evaluation crops (500)")
    ap.add_argument("--eval-in", type=int, default=300, help="unseen crops of the calibration photos (300)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (ORT sessions: bench.common defaults)")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from importlib.metadata import version

    import torch_pruning  # noqa: F401  (fail early when the bench extra is missing)

    from models.photo_crops import CALIBRATION, EVALUATION, crops
    from onnxprune.analysis.cost import model_macs
    info = machine_info(f"Torch-Pruning on CPU, torch threads {args.threads}, shared machine: wall times are noisy")
    info.update(torch=torch.__version__, torch_pruning=version("torch-pruning"))
    levels = tuple(float(v) for v in args.levels.split(","))
    t_all = time.perf_counter()

    path = model_path()
    x_eval = crops("evaluation", args.eval, EVAL_SEED)
    x_in = crops("calibration", args.eval_in, IN_SEED) if args.eval_in else None
    ref = logits(path, x_eval)
    ev = ((ref, x_eval), (logits(path, x_in) if x_in is not None else None, x_in))
    base = build_torch()
    err = check_against_ort(base, path, x_eval[:8], tol=1e-3)
    print(f"torch MobileNetV2 (torchvision weights, BN kept) vs ORT on 8 eval crops: max abs err {err:.2e}", flush=True)
    macs0 = model_macs(onnx.load(path))
    params0 = sum(p.numel() for p in base.parameters())
    example = torch.zeros(*EXAMPLE)

    grads, grad_wall, grad_cpu = None, 0.0, 0.0
    if "taylor" in IMPORTANCES:
        x_cal = crops("calibration", args.calib, CALIB_SEED)
        t0, c0 = time.perf_counter(), time.process_time()
        pseudo = logits(path, x_cal).argmax(1).astype(np.int64)  # no labels: the original's top-1
        grads = taylor_grads(base, (x_cal, pseudo), batch_size=GRAD_BATCH)
        grad_wall, grad_cpu = time.perf_counter() - t0, time.process_time() - c0
        del x_cal
        print(f"Taylor gradients on {args.calib} calibration crops (pseudo-labels: {len(np.unique(pseudo))} classes): "
              f"{grad_wall:.0f}s", flush=True)

    results = []
    for flops in levels:
        for imp in IMPORTANCES:
            row = f"torch-pruning-{imp}"
            t0, c0 = time.perf_counter(), time.process_time()
            pruned, ratio, tp_ratio = prune_tp(base, imp, flops, None, example=example, grads=grads)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if imp == "taylor":
                wall, cpu = wall + grad_wall, cpu + grad_cpu
            proto = export_proto(pruned, example)
            rec = {"row": row, "method": row, "refit": "none", "allocate": "uniform", "flops": flops,
                   "calibrated": imp == "taylor", "prune_wall_s": wall, "prune_cpu_s": cpu,
                   "macs_ratio": model_macs(proto) / macs0, "tp_macs_ratio": tp_ratio,
                   "params_ratio": sum(p.numel() for p in pruned.parameters()) / params0,
                   "pruning_ratio": ratio, "torch_vs_ort_err": err}
            if imp == "taylor":
                rec.update(calibration_samples=args.calib, grad_wall_s=grad_wall)
            rec.update(**both(proto, ev), photos=photo_checks(proto),
                       kept={n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, nn.Conv2d)})
            print(f"  {flops} {row:<22} ratio {ratio:.4f} macs {rec['macs_ratio']:.3f} (tp {tp_ratio:.3f}) "
                  f"top1 {rec['top1_agreement']:.3f} KL {rec['kl']:.3f} | calib photos top1 "
                  f"{rec.get('in_top1_agreement', float('nan')):.3f} | {wall:.0f}s load {loadavg()[0]:.2f}", flush=True)
            results.append(rec)
    total = time.perf_counter() - t_all

    print("\n" + format_table(
        ["MACs tgt", "row", "ratio", "MACs", "MACs (tp)", "params", "top1 agr", "top5 ovl", "KL",
         "calib-photo top1", "calib-photo KL", "wall s"],
        [[r["flops"], r["row"], f"{r['pruning_ratio']:.4f}", f"{r['macs_ratio']:.3f}", f"{r['tp_macs_ratio']:.3f}",
          f"{r['params_ratio']:.3f}", f"{r['top1_agreement']:.3f}", f"{r['top5_overlap']:.3f}", f"{r['kl']:.3f}",
          f"{r.get('in_top1_agreement', float('nan')):.3f}", f"{r.get('in_kl', float('nan')):.3f}",
          f"{r['prune_wall_s']:.0f}"] for r in results]))
    info["loadavg_end"] = loadavg()
    write_json(args.out, {"machine": info, "total_s": total, "model": os.path.relpath(path, ROOT),
               "data": {"calibration_photos": list(CALIBRATION), "evaluation_photos": list(EVALUATION),
                        "calib_seed": CALIB_SEED, "calibration_crops": args.calib, "grad_batch": GRAD_BATCH,
                        "eval_seed": EVAL_SEED, "eval_crops": args.eval,
                        "in_distribution_seed": IN_SEED, "in_distribution_crops": args.eval_in},
               "notes": ["Torch-Pruning BasePruner, local (uniform) pruning ratio by bisection on TP's MACs "
                         "(tol 0.004), final Linear ignored, BN kept, no finetune; prune_wall_s covers the "
                         "whole bisection (and, for Taylor, the one gradient pass); macs_ratio counted by "
                         "onnxprune on the exported ONNX, tp_macs_ratio by tp.utils.count_ops_and_params; "
                         "Taylor pseudo-labels: the original model's top-1 on the calibration crops"],
               "results": results}, total)


if __name__ == "__main__":
    main()
