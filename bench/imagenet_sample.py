"""ImageNet MobileNetV2 on real ImageNet photos, pruned without labels and evaluated with them (issue 13).

    python -m bench.imagenet_sample [--folds A,B] [--levels 0.9,0.7,0.5] [--rows default,output,...]
                                    [--quick] [--augment 3] [--out bench/results/imagenet_sample.json] [--merge]
                                    [--replot]

One prune of MobileNetV2 takes 10-35 minutes on 2 busy CPU cores (allocate=output is the slow one), so the
full grid (2 folds x 3 levels x 6 rows) is a night's run; --quick runs fold B at 70% MACs, default and
allocate=output only, and --folds/--levels/--rows pick any other part (--merge keeps the earlier rows of
the JSON that this run does not redo).

Data: ../shared/imagenet-sample/ (500 ImageNet photos, one per even class; bench/lib/imagenet_sample.py),
never copied: a fold's calibration folder is a temporary folder of links. Fold A calibrates on the 250
classes ≡ 0 (mod 4) and evaluates on the 250 classes ≡ 2 (mod 4), fold B the reverse. Calibration is the
image folder itself (`--preprocess imagenet`, `--augment 3`: the centre crop and 3 random-resized, flipped
crops of every image, 1000 samples; 25 images held out by the library). Evaluation: the centre crops of
the other fold's images with their labels: top-1 and top-5 accuracy of the original and of the pruned
model, agreement with the original, KL (onnxprune.report.evaluate.output_metrics), and the top-1 on the
centre crops of the calibration images themselves ("calib top-1", the over-fitting check). No labels are
used by any row.

Rows (--rows; all side by side in one run, every row in a fresh subprocess under /usr/bin/time -v for
its prune wall time, process CPU time and peak RSS; default: default,no-refit-sweep,no-bias-correction,
no-residual,uniform,output-distill,magfull,tp-l1,tp-taylor):
- default: `onnxprune.prune` with every option at its default: greedy-local + full re-fit, allocate auto
  (output-aware with calibration data), residual targets, the re-fit sweep, bias correction; the same pipeline
  as the output row.
- no-refit-sweep: the default without the re-fit sweep (`refit_sweep=False`), the default before it; the rows
  of the JSON keyed `default` before that change are this row and were renamed.
- no-bias-correction: the default without the re-fit sweep or bias correction (`bias_correction=False`), the
  default before bias correction; the rows of the JSON keyed `default` before that change are this row.
- no-residual: the same without residual targets (`residual_target=False`), the default before residual
  targets; the rows of the JSON keyed `default` before that change are this row.
- uniform: greedy-local + full re-fit with allocate=uniform, no residual targets, no re-fit sweep and no bias
  correction, the default before issue 13 (the rows keyed `default` before allocate auto are this row).
- magfull: magnitude selection + full re-fit (with residual targets, without the re-fit sweep or bias
  correction), uniform allocation.
- One feature each on top of uniform: grid (the re-fit's ridge grid widened to 1e3 and the bias-only limit,
  chosen per consumer on held-out images), output (allocate=output), distill (distillation with its
  default options), combined (greedy-combined).
- Together: output-distill (allocate=output + distill), all (output + distill + greedy-combined + the
  wide grid).
- tp-l1 / tp-taylor: Torch-Pruning 1.6.1 (bench/lib/torch_pruning.py: one uniform ratio bisected to the
  MACs, final Linear kept, BN kept, no finetune); Taylor's gradients are those of the cross-entropy
  against the original's top-1 on the same 1000 calibration samples (no labels).
The JSON goes to --out; the plot (top-1 vs MACs kept, one line per row, one panel per fold) beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.lib.common import format_table, loadavg, machine_info, now, time_v

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "imagenet_sample.json")
LEVELS = (0.9, 0.7, 0.5)
OLD_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)   # pipeline/refit.RIDGE_GRID before issue 13
WIDE_GRID = OLD_GRID + (100.0, 1000.0, float("inf"))   # up to the bias-only correction (infinite ridge)
ROWS: dict[str, dict] = {
    # the library defaults (allocate auto: output with calibration data; residual targets)
    "default": dict(label="default: greedy-local+full, allocate auto = output, residual targets, re-fit sweep, "
                          "bias correction", opts={}),
    # the default before the re-fit sweep; the rows of the JSON keyed `default` before that change are this row
    "no-refit-sweep": dict(label="the same without the re-fit sweep (--no-refit-sweep)",
                           opts=dict(refit_sweep=False)),
    # the default before bias correction; the rows keyed `default` before it are this row
    "no-bias-correction": dict(label="the same without the re-fit sweep or bias correction "
                                     "(--no-refit-sweep --no-bias-correction)",
                               opts=dict(refit_sweep=False, bias_correction=False)),
    # the default before residual targets (and bias correction); the rows keyed `default` before residual
    # targets are this row
    "no-residual": dict(label="the same without residual targets or bias correction",
                        opts=dict(residual_target=False, refit_sweep=False, bias_correction=False)),
    # the default before issue 13 (uniform allocation, no residual targets, no bias correction)
    "uniform": dict(label="greedy-local+full, uniform, no residual targets",
                    opts=dict(allocate="uniform", residual_target=False, refit_sweep=False, bias_correction=False)),
    "magfull": dict(label="magnitude+full (uniform)",
                    opts=dict(method="magnitude", refit="full", allocate="uniform", refit_sweep=False,
                              bias_correction=False)),
    # one feature each on top of `uniform`
    "grid": dict(label="uniform + ridge grid to bias-only",
                 opts=dict(allocate="uniform", residual_target=False, refit_sweep=False, bias_correction=False),
                 grid=WIDE_GRID),
    "output": dict(label="greedy-local+full, allocate output (the default's pipeline)", opts=dict(allocate="output")),
    "distill": dict(label="uniform + distill",
                    opts=dict(allocate="uniform", residual_target=False, refit_sweep=False, bias_correction=False,
                              distill=True)),
    "combined": dict(label="greedy-combined+full (uniform)",
                     opts=dict(method="greedy-combined", allocate="uniform", residual_target=False,
                               refit_sweep=False, bias_correction=False)),
    # together
    "output-distill": dict(label="allocate output + distill", opts=dict(allocate="output", distill=True)),
    "all": dict(label="output + distill + combined + wide grid",
                opts=dict(allocate="output", distill=True, method="greedy-combined"), grid=WIDE_GRID),
    "tp-l1": dict(label="torch-pruning-l1 (uniform ratio)", tp="l1"),
    "tp-taylor": dict(label="torch-pruning-taylor (uniform ratio)", tp="taylor"),
}
DEFAULT_ROWS = "default,no-refit-sweep,no-bias-correction,no-residual,uniform,output-distill,magfull,tp-l1,tp-taylor"
QUICK = dict(folds="B", levels="0.7", rows="uniform,output")   # --quick: one fold, one level, two rows


# ------------------------------------------------------------------------------ child: one prune
def _child(spec_json: str) -> None:
    """Prune one row (fresh process), save the model, print one JSON line."""
    spec = json.loads(spec_json)
    import torch
    torch.set_num_threads(spec["threads"])
    from bench.lib import imagenet_sample as S
    from bench.lib.imagenet import model_path
    row = ROWS[spec["row"]]
    cal_items, _ = S.split(spec["fold"])
    links = S.link_folder(cal_items)
    rec: dict = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if "tp" in row:
        rec.update(_tp_child(row["tp"], links.name, spec, model_path()))
    else:
        import onnxprune
        import onnxprune.pipeline.refit as refit
        if row.get("grid"):
            refit.RIDGE_GRID = tuple(row["grid"])
        opts = dict(row["opts"])
        opts.setdefault("round_to", spec["round_to"])
        pruned, rep = onnxprune.prune(model_path(), links.name, flops=spec["flops"], preprocess="imagenet",
                                      augment=spec["augment"], quiet=True, **opts)
        rec.update(prune_wall_s=time.perf_counter() - t0, macs_ratio=rep.macs_ratio,
                   params_ratio=rep.params_after / rep.params_before, calibration_samples=rep.calibration_samples,
                   allocate=rep.allocate, refit=rep.refit, method=rep.method, distill=rep.distill,
                   ridge_grid=list(refit.RIDGE_GRID),
                   kept={g.id: g.kept_count for g in rep.groups if not g.frozen},
                   group_methods={g.id: g.method for g in rep.groups if not g.frozen},
                   notes={g.id: g.note for g in rep.groups if not g.frozen}, bias_correction=rep.bias_correction,
                   refit_sweep=rep.refit_sweep)
        onnxprune.save_model(pruned, spec["save"])
    rec.update(prune_cpu_s=time.process_time() - c0,
               peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(rec, default=float))


def _tp_child(importance: str, folder: str, spec: dict, path: str) -> dict:
    """Torch-Pruning on the torch MobileNetV2 with the torchvision weights; Taylor from pseudo-labels."""
    import onnx
    import torch

    from bench.lib.imagenet import logits
    from bench.lib.torch_pruning import check_against_ort, export_proto, prune_tp, taylor_grads
    from bench.torch_pruning_imagenet import build_torch
    from onnxprune.analysis.cost import model_macs
    from onnxprune.calibration import load_calibration
    t0 = time.perf_counter()
    base = build_torch()
    example = torch.zeros(1, 3, 224, 224)
    grads, rec = None, {}
    if importance == "taylor":
        cal = load_calibration(folder, onnx.load(path), 0.1, "imagenet", augment=spec["augment"], seed=0)
        x = np.concatenate([b["input"] for _, b in cal.batches(64)])
        pseudo = logits(path, x).argmax(1).astype(np.int64)   # no labels: the original's top-1
        grads = taylor_grads(base, (x, pseudo), batch_size=32)
        rec["calibration_samples"] = len(x)
        del x
    pruned, ratio, tp_ratio = prune_tp(base, importance, spec["flops"], None, example=example, grads=grads)
    rec["prune_wall_s"] = time.perf_counter() - t0
    proto = export_proto(pruned, example)
    rec.update(macs_ratio=model_macs(proto) / model_macs(onnx.load(path)), tp_macs_ratio=tp_ratio,
               pruning_ratio=ratio, method=f"torch-pruning-{importance}", refit="none", allocate="uniform",
               torch_vs_ort_err=check_against_ort(base, path, np.zeros((2, 3, 224, 224), np.float32), tol=1e-3))
    onnx.save(proto, spec["save"])
    return rec


# ------------------------------------------------------------------------------ parent
def evaluate(model_file: str, data: dict) -> dict:
    from bench.lib.imagenet import logits
    from onnxprune.report.evaluate import output_metrics
    out = {}
    for key, (x, y, ref) in data.items():
        m = output_metrics(ref, logits(model_file, x), y)
        prefix = "" if key == "eval" else "calib_"
        out.update({f"{prefix}top1_original": m["accuracy_original"], f"{prefix}top1": m["accuracy_pruned"],
                    f"{prefix}top5_original": m["top5_original"], f"{prefix}top5": m["top5_pruned"],
                    f"{prefix}agreement": m["agreement"], f"{prefix}kl": m["kl"], f"{prefix}samples": m["samples"]})
    return out


def run_row(key: str, fold: str, flops: float, args, data: dict, tmp: str) -> dict:
    save = os.path.join(tmp, f"{key}_{fold}_{flops}.onnx")
    spec = dict(row=key, fold=fold, flops=flops, augment=args.augment, threads=args.threads, save=save,
                round_to=args.round_to if args.round_to == "auto" else int(args.round_to))
    rec = {"row": key, "label": ROWS[key]["label"], "fold": fold, "flops": flops, "loadavg_before": loadavg(),
           "date": now()}
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "bench.imagenet_sample", "--child",
                          json.dumps(spec)], cwd=ROOT, capture_output=True, text=True)
    rec.update(subprocess_wall_s=time.perf_counter() - t0, loadavg_after=loadavg())
    if res.returncode:
        return {**rec, "error": res.stderr.strip()[-3000:]}
    rec.update(json.loads(res.stdout.strip().splitlines()[-1]), **time_v(res.stderr))
    rec.update(evaluate(save, data))
    os.remove(save)
    return rec


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in results if "error" not in r]
    folds = sorted({r["fold"] for r in ok})
    fig, axes = plt.subplots(1, len(folds), figsize=(6.5 * len(folds), 5), squeeze=False)
    for ax, fold in zip(axes[0], folds):
        mine = [r for r in ok if r["fold"] == fold]
        for i, key in enumerate(dict.fromkeys(r["row"] for r in mine)):
            pts = sorted((r["macs_ratio"], 100 * r["top1"]) for r in mine if r["row"] == key)
            ax.plot(*zip(*pts), marker="o", lw=1.8, color=f"C{i}", label=ROWS[key]["label"])
        if mine:
            ax.axhline(100 * mine[0]["top1_original"], ls="--", color="k", lw=0.8, label="original")
        ax.set(title=f"fold {fold}: evaluation classes never calibrated on", xlabel="MACs kept (achieved fraction)",
               ylabel="top-1 accuracy % (labels)", ylim=(-2, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("ImageNet MobileNetV2 (torchvision weights) pruned without labels or finetuning on training data;\n"
                 "250 calibration photos (1000 samples), 250 evaluation photos of other classes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results) -> str:
    ok = [r for r in results if "error" not in r]
    return format_table(
        ["fold", "MACs tgt", "row", "MACs", "top1 orig", "top1", "top5", "agree", "KL", "calib top1", "prune s",
         "peak RSS MB", "load"],
        [[r["fold"], r["flops"], r["label"], f"{r['macs_ratio']:.3f}", f"{100 * r['top1_original']:.1f}",
          f"{100 * r['top1']:.1f}", f"{100 * r['top5']:.1f}", f"{100 * r['agreement']:.1f}", f"{r['kl']:.2f}",
          f"{100 * r['calib_top1']:.1f}", f"{r['prune_wall_s']:.0f}", f"{r['time_v_max_rss_mb']:.0f}",
          f"{r['loadavg_before'][0]:.1f}"] for r in ok])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folds", default="A,B", help="comma-separated folds, A and/or B (A,B)")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)), help="MACs fractions to keep (0.9,0.7,0.5)")
    ap.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated keys of {', '.join(ROWS)} "
                    f"({DEFAULT_ROWS})")
    ap.add_argument("--quick", action="store_true", help="fold B, 70%% MACs, rows default and output only")
    ap.add_argument("--augment", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in each prune (2)")
    ap.add_argument("--round-to", default="1", help="round_to of every onnxprune row (1: the counts the MACs "
                    "target gives, comparable across rows; auto, the library's default, measures latency on "
                    "this machine, which is noisy when it is shared)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--merge", action="store_true", help="keep the earlier rows this run does not redo")
    ap.add_argument("--replot", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args.child)
    if args.quick:
        args.folds, args.levels, args.rows = QUICK["folds"], QUICK["levels"], QUICK["rows"]
    unknown = [k for k in args.rows.split(",") if k not in ROWS]
    folds = [f for f in args.folds.split(",") if f not in ("A", "B")]
    if unknown or folds:
        ap.error(f"unknown rows {unknown} (choose from {', '.join(ROWS)})" if unknown else
                 f"unknown folds {folds} (A or B)")
    os.chdir(ROOT)
    plot_path = os.path.splitext(args.out)[0] + ".png"
    old = json.load(open(args.out)) if os.path.exists(args.out) else {}
    if args.replot:
        return plot(old["results"], plot_path)
    from bench.lib import imagenet_sample as S
    from bench.lib.imagenet import logits, model_path
    info = machine_info("each row a fresh subprocess under nice as launched; 2 CPU cores shared with other "
                        "agents: wall times are noisy, see loadavg per row")
    rows = args.rows.split(",")
    if any("tp" in ROWS[k] for k in rows):
        import torch_pruning  # noqa: F401  (fail early when the bench extra is missing)
    levels = [float(v) for v in args.levels.split(",")]
    results = []
    t_all = time.perf_counter()
    path = model_path()
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "models", "cache")) as tmp:
        for fold in args.folds.split(","):
            cal_items, ev_items = S.split(fold)
            data = {}
            for key, items in (("eval", ev_items), ("calib", cal_items)):
                x, y = S.eval_data(items)
                data[key] = (x, y, logits(path, x))
            for flops in levels:
                for key in rows:
                    rec = run_row(key, fold, flops, args, data, tmp)
                    results.append(rec)
                    if "error" in rec:
                        print(f"  {fold} {flops} {key}: FAILED {rec['error'][-400:]}", flush=True)
                    else:
                        print(f"  {fold} {flops} {rec['label']:<40} top1 {100 * rec['top1']:.1f} "
                              f"(orig {100 * rec['top1_original']:.1f}) calib {100 * rec['calib_top1']:.1f} "
                              f"macs {rec['macs_ratio']:.3f} {rec['prune_wall_s']:.0f}s "
                              f"{rec['time_v_max_rss_mb']:.0f} MB load {rec['loadavg_before'][0]:.1f}", flush=True)
                    _save(args, info, results, old, t_all, plot_path)
    print("\n" + table(results))
    _save(args, info, results, old, t_all, plot_path)


def _save(args, info, results, old, t_all, plot_path):
    if args.merge and old:
        done = {(r["row"], r["fold"], r["flops"]) for r in results}
        results = [r for r in old["results"] if (r["row"], r["fold"], r["flops"]) not in done] + results
    info = dict(info, loadavg_end=loadavg())
    doc = {"machine": info, "total_s": time.perf_counter() - t_all, "augment": args.augment,
           "round_to": args.round_to,
           "rows": {k: {kk: vv for kk, vv in v.items()} for k, v in ROWS.items()},
           "old_ridge_grid": OLD_GRID, "wide_ridge_grid": [str(v) for v in WIDE_GRID], "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    plot(results, plot_path)


if __name__ == "__main__":
    main()
