"""Pruned Fashion-MNIST models before and after one identical short finetune (issue 6).

    pip install -e '.[bench]'          # torch-pruning==1.6.1, for the Torch-Pruning rows
    python bench/finetune.py [--levels 0.5,0.3] [--rows ...] [--out bench/results/finetune.json]

For each model (models/fmnist_resnet.onnx, models/fmnist_mobilenet.onnx) and MACs level, every row
of ROWS is pruned (onnxprune rows as bench/quality.py prunes them, calibrated on
models/fmnist_calib.npz; Torch-Pruning rows as bench/torch_pruning_baseline.py does), evaluated on
models/fmnist_test.npz, finetuned with onnxprune.finetune.finetune -- the same recipe for every row,
Torch-Pruning's included (its pruned module is exported to ONNX first) -- and evaluated again.
The unpruned original gets the same finetune as a control: it shows what the recipe itself does to
a converged model.

The recipe (RECIPE): 1 epoch over 10,000 Fashion-MNIST training images (a seeded subset), batch 64,
SGD momentum 0.9 Nesterov, lr 0.003 with cosine decay to 0, no weight decay, the training script's
augmentation (random 2-pixel shift, horizontal flip; models/train_common.augment) and label
smoothing 0.1, seed 0. Trains every Conv/Gemm weight and bias; nothing else exists in these graphs
(BatchNorm is folded). The lr was picked once, before this bench, on 3,000 other training images
(not the test set) for the ResNet at 50% MACs: magnitude+none reached 89.3/90.0/90.3/88.5% and
greedy-local+full 93.2/93.0% with lr 0.001/0.003/0.005/0.01 (resp. 0.003/0.01); 0.03 diverges
(no BatchNorm left to steady training); the unpruned ResNet kept 93.7% at 0.003 (93.5% at 0.01).

Pruned models are cached in --cache-dir (pruning greedy-combined takes minutes), so an interrupted
run resumes; the JSON is rewritten after every row. Plot: <out stem>.png.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnx
import torch

from bench.lib.common import format_table, loadavg, machine_info
from bench.lib.fmnist import CALIB, MODELS, TEST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (row label, method, refit, allocate); allocate uniform, the library default when these rows were measured
ROWS = [("original", None, None, None),
        ("greedy-local+full", "greedy-local", "full", "uniform"),
        ("greedy-combined+full", "greedy-combined", "full", "uniform"),
        ("magnitude+full", "magnitude", "full", "uniform"),
        ("magnitude+none", "magnitude", "none", "uniform"),
        ("random+none", "random", "none", "uniform"),
        ("torch-pruning-l1", "tp", "l1", None),
        ("torch-pruning-taylor", "tp", "taylor", None)]
RECIPE = {"train_images": 10000, "subset_seed": 1, "epochs": 1, "batch_size": 64, "optimizer": "sgd",
          "momentum": 0.9, "lr": 0.003, "schedule": "cosine", "weight_decay": 0.0, "augment": "train_common.augment",
          "label_smoothing": 0.1, "seed": 0}


def train_subset():
    from models.fmnist_data import load_fmnist
    x, y = load_fmnist("train")
    idx = np.sort(np.random.default_rng(RECIPE["subset_seed"]).permutation(len(x))[:RECIPE["train_images"]])
    return x[idx], y[idx]


def prune_row(name, row, flops, cache_dir) -> tuple[onnx.ModelProto, dict]:
    """The pruned model of one row (from the cache when there), and how it was made."""
    label, method, refit, allocate = next(r for r in ROWS if r[0] == row)
    path = MODELS[name]
    if method is None:
        return onnx.load(path), {"prune_wall_s": 0.0, "macs_ratio": 1.0, "params_ratio": 1.0}
    stem = os.path.join(cache_dir, f"{name}_{row}_{flops}")
    if os.path.exists(stem + ".onnx") and os.path.exists(stem + ".json"):
        return onnx.load(stem + ".onnx"), json.load(open(stem + ".json"))
    t0 = time.perf_counter()
    if method == "tp":
        from bench.lib.torch_pruning import build_torch, export_proto, prune_tp
        from onnxprune.analysis.cost import model_macs
        from onnxprune.graph.params import count_params
        with np.load(CALIB) as z:
            calib = (z["input"], z["labels"].astype(np.int64))
        pruned_t, ratio, tp_ratio = prune_tp(build_torch(name, MODELS[name]), refit, flops, calib)
        pruned = export_proto(pruned_t)
        orig = onnx.load(path)
        info = {"pruning_ratio": ratio, "tp_macs_ratio": tp_ratio,
                "macs_ratio": model_macs(pruned) / model_macs(orig),
                "params_ratio": count_params(pruned) / count_params(orig)}
    else:
        from onnxprune import prune
        data_free = refit == "none" and method in ("magnitude", "random")
        pruned, rep = prune(path, None if data_free else CALIB, method=method, refit=refit, flops=flops,
                            allocate=allocate, round_to=1, batch_size=32, quiet=True)
        d = rep.to_dict()
        info = {"allocate": rep.allocate, "macs_ratio": d["macs_ratio"], "params_ratio": d["params_ratio"]}
    info["prune_wall_s"] = time.perf_counter() - t0
    os.makedirs(cache_dir, exist_ok=True)
    onnx.save(pruned, stem + ".onnx")
    json.dump(info, open(stem + ".json", "w"))
    return pruned, info


def run_one(name, row, flops, data, cache_dir, device) -> dict:
    from models.train_common import augment
    from onnxprune.finetune import finetune
    from onnxprune.report.evaluate import compare
    pruned, info = prune_row(name, row, flops, cache_dir)
    rec = {"model": name, "row": row, "flops": None if row == "original" else flops, **info}
    before = compare(MODELS[name], pruned, TEST)
    losses = []
    t0 = time.perf_counter()
    tuned = finetune(pruned, *data, epochs=RECIPE["epochs"], lr=RECIPE["lr"], batch_size=RECIPE["batch_size"],
                     seed=RECIPE["seed"], optimizer=RECIPE["optimizer"], momentum=RECIPE["momentum"],
                     weight_decay=RECIPE["weight_decay"], schedule=RECIPE["schedule"], device=device,
                     augment=augment, label_smoothing=RECIPE["label_smoothing"], losses=losses)
    ft_wall = time.perf_counter() - t0
    after = compare(MODELS[name], tuned, TEST)
    k = max(1, len(losses) // 20)
    rec.update(accuracy_original=before["accuracy_original"], accuracy_before=before["accuracy_pruned"],
               accuracy_after=after["accuracy_pruned"], agreement_before=before["agreement"],
               agreement_after=after["agreement"], kl_before=before["kl"], kl_after=after["kl"],
               finetune_wall_s=ft_wall, finetune_steps=len(losses),
               loss_first=float(np.mean(losses[:k])), loss_last=float(np.mean(losses[-k:])),
               loss_curve=[float(np.mean(losses[i:i + k])) for i in range(0, len(losses), k)])
    return rec


def _order(r) -> tuple:
    names = [row[0] for row in ROWS]
    return (r["model"] not in MODELS, list(MODELS).index(r["model"]) if r["model"] in MODELS else 0,
            -(r["flops"] or 2), names.index(r["row"]) if r["row"] in names else len(names))


def tables(results) -> str:
    results = sorted(results, key=_order)
    parts = [format_table(
        ["model", "MACs tgt", "row", "MACs", "acc before", "acc after", "Δ vs orig before", "Δ vs orig after",
         "prune s", "finetune s"],
        [[r["model"], r["flops"] or "-", r["row"], f"{r['macs_ratio']:.3f}", f"{100 * r['accuracy_before']:.2f}",
          f"{100 * r['accuracy_after']:.2f}", f"{100 * (r['accuracy_before'] - r['accuracy_original']):+.2f}",
          f"{100 * (r['accuracy_after'] - r['accuracy_original']):+.2f}", f"{r['prune_wall_s']:.1f}",
          f"{r['finetune_wall_s']:.1f}"] for r in results if "error" not in r])]
    return "\n\n".join(parts)


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in results if "error" not in r]
    panels = [(m, f) for m in dict.fromkeys(r["model"] for r in ok)
              for f in sorted({r["flops"] for r in ok if r["model"] == m and r["flops"]}, reverse=True)]
    if not panels:
        return
    ncol = min(2, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(7 * ncol, 6.5 * nrow), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (m, f) in zip(axes.flat, panels):
        rows = sorted((r for r in ok if r["model"] == m and r["flops"] == f), key=_order)
        ctrl = next((r for r in ok if r["model"] == m and r["row"] == "original"), None)
        xs = np.arange(len(rows))
        ax.bar(xs - 0.2, [100 * r["accuracy_before"] for r in rows], 0.4, label="pruned, no finetune", color="C7")
        ax.bar(xs + 0.2, [100 * r["accuracy_after"] for r in rows], 0.4, label="after finetune", color="C0")
        for x, r in zip(xs, rows):
            ax.text(x - 0.2, 100 * r["accuracy_before"] + 0.5, f"{100 * r['accuracy_before']:.1f}", ha="center",
                    fontsize=7, rotation=90, va="bottom")
            ax.text(x + 0.2, 100 * r["accuracy_after"] + 0.5, f"{100 * r['accuracy_after']:.1f}", ha="center",
                    fontsize=7, rotation=90, va="bottom")
        orig = rows[0]["accuracy_original"] * 100
        ax.axhline(orig, ls="--", color="k", lw=1, label=f"original {orig:.2f}")
        if ctrl:
            ax.axhline(100 * ctrl["accuracy_after"], ls=":", color="C3", lw=1,
                       label=f"original + same finetune {100 * ctrl['accuracy_after']:.2f}")
        ax.set_xticks(xs, [r["row"] for r in rows], rotation=35, ha="right", fontsize=8)
        ax.set(ylabel="test accuracy (%)", ylim=(0, 105), title=f"{m}, MACs {f}")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Fashion-MNIST: pruned (no finetune) vs after the same short finetune "
                 f"({RECIPE['epochs']} epoch x {RECIPE['train_images']} images, SGD lr {RECIPE['lr']} cosine)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="0.5")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rows", default=",".join(r[0] for r in ROWS))
    ap.add_argument("--out", default="bench/results/finetune.json")
    ap.add_argument("--append", action="store_true", help="keep the rows already in --out (others are added)")
    ap.add_argument("--cache-dir", default="models/cache/finetune_bench")
    ap.add_argument("--device", default=None, help="finetune device (default: CUDA when available)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--replot", action="store_true")
    args = ap.parse_args()
    os.chdir(ROOT)
    torch.set_num_threads(args.threads)
    stem = os.path.splitext(args.out)[0]
    if args.replot:
        data = json.load(open(args.out))
        print(tables(data["results"]))
        return plot(data["results"], stem + ".png")
    from onnxprune.finetune import default_device
    device = args.device or default_device()
    info = machine_info(f"prune on CPU, finetune on {device}; shared machine: wall times are noisy")
    info["torch"] = torch.__version__
    results = json.load(open(args.out))["results"] if args.append and os.path.exists(args.out) else []
    done = {(r["model"], r["row"], r["flops"]) for r in results if "error" not in r}
    data = train_subset()
    t_start = time.perf_counter()
    levels = [float(v) for v in args.levels.split(",")]
    for name in args.models.split(","):
        for flops in levels:
            for row in args.rows.split(","):
                key = (name, row, None if row == "original" else flops)
                if key in done:
                    continue
                done.add(key)
                try:
                    rec = run_one(name, row, flops, data, args.cache_dir, device)
                except Exception as e:  # a failed row is recorded, not fatal
                    rec = {"model": name, "row": row, "flops": flops, "error": f"{type(e).__name__}: {e}"}
                    print(f"  {name} {flops} {row}: FAILED {rec['error']}", flush=True)
                else:
                    print(f"  {name} {key[2]} {row:<22} macs {rec['macs_ratio']:.3f} acc {rec['accuracy_before']:.4f}"
                          f" -> {rec['accuracy_after']:.4f}  prune {rec['prune_wall_s']:.0f}s finetune "
                          f"{rec['finetune_wall_s']:.0f}s  load {loadavg()[0]:.2f}", flush=True)
                results = [r for r in results if (r["model"], r["row"], r["flops"]) != key] + [rec]
                info["loadavg_end"] = loadavg()
                with open(args.out, "w") as f:
                    json.dump({"machine": info, "recipe": RECIPE, "device": device, "calibration": CALIB,
                               "test": TEST, "run_s": time.perf_counter() - t_start, "results": results},
                              f, indent=1, default=float)
    print("\n" + tables(results))
    plot(results, stem + ".png")
    print(f"wrote {args.out} and {stem}.png")


if __name__ == "__main__":
    main()
