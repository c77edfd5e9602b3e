"""Test accuracy of pruned Fashion-MNIST models (no finetuning), every method side by side.

    python bench/quality.py [--quick] [--out bench/results/quality.json] [--wait-mobilenet S]

1. Quality: each model (models/fmnist_resnet.onnx, models/fmnist_mobilenet.onnx) pruned to MACs
   0.7, 0.5, 0.3 with every row of ROWS, calibrated on models/fmnist_calib.npz (512 images);
   test accuracy, top-1 agreement and KL(original || pruned) on models/fmnist_test.npz, achieved
   MACs and params ratios, prune wall and CPU time.  Table on stdout, JSON to --out, one plot per
   model (accuracy vs MACs kept) next to it: <out stem>_<model>.png.
2. Cost: greedy-local+full at 0.5 on the ResNet, loss and uniform allocation, with 512 and 4096
   calibration images (seeded subsets of the Fashion-MNIST training set, [0, 1] like
   fmnist_calib.npz), each in a fresh subprocess under /usr/bin/time -v: prune wall time, process
   CPU time, peak RSS.
--quick: ResNet only, MACs 0.5, 4 rows, cost with 512 images only (smoke test).
The MobileNet may still be training: it is waited for (up to --wait-mobilenet seconds, polled
every 60 s) after the ResNet is done, and skipped with a note if it never appears.
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

from bench.lib.common import format_table, loadavg, machine_info, time_v, torch_pruning_rows
from bench.lib.fmnist import CALIB, MODELS, TEST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = (0.7, 0.5, 0.3)
# (method, refit, allocate); allocation explicit (loss for greedy, uniform for baselines, plus two
# crossed rows) so the rows do not move when the library default does; None = the library default
ROWS = [("greedy-local", "full", "loss"), ("greedy-local", "gamma", "loss"), ("greedy-convex", "full", "loss"),
        ("greedy-convex", "none", "loss"), ("gfs", "full", "loss"), ("gfs", "none", "loss"),
        ("magnitude", "none", "uniform"), ("magnitude", "gamma", "uniform"), ("magnitude", "full", "uniform"),
        ("random", "none", "uniform"), ("random", "full", "uniform"),
        ("greedy-local", "full", "uniform"), ("magnitude", "full", "loss")]
QUICK_ROWS = [ROWS[0], ROWS[6], ROWS[8], ROWS[9]]
# selection by the full re-fit's residual (group OMP), added after the local rows were measured
OMP_ROWS = [("greedy-omp", "full", "loss"), ("greedy-omp", "full", "uniform")]
# global imitation (issue 5) beside the local default, same models, levels and data
# greedy-global is exact on groups of at most 32 channels (GlobalOptions.exact_limit) and Taylor above
GLOBAL_ROWS = [("greedy-local", "full", None), ("greedy-taylor", "full", None), ("greedy-combined", "full", None),
               ("greedy-global", "full", None), ("taylor", "none", None), ("taylor", "full", None)]


def label(method, refit, allocate):
    return f"{method}+{refit} ({allocate or 'default'})"


def run_row(path, method, refit, allocate, flops) -> dict:
    from onnxprune import prune
    from onnxprune.report.evaluate import compare
    rec = {"row": label(method, refit, allocate), "method": method, "refit": refit, "allocate": allocate,
           "flops": flops}
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        # data-free rows (selection and allocation ignore data) run as a user would: without calibration
        data_free = refit == "none" and method in ("magnitude", "random") and allocate in (None, "uniform")
        calib = None if data_free else CALIB
        rec["calibrated"] = calib is not None
        pruned, rep = prune(path, calib, method=method, refit=refit, flops=flops, allocate=allocate,
                            round_to=1, batch_size=32, quiet=True)
        rec.update(prune_wall_s=time.perf_counter() - w0, prune_cpu_s=time.process_time() - c0)
    except Exception as e:  # a failed row is recorded, not fatal
        return {**rec, "error": f"{type(e).__name__}: {e}"}
    d = rep.to_dict()
    rec.update(allocate=rep.allocate, row=label(method, refit, rep.allocate))  # what was actually used
    live = [g for g in rep.groups if not g.frozen]
    rec.update(macs_ratio=d["macs_ratio"], params_ratio=d["params_ratio"], **compare(path, pruned, TEST),
               kept={g.id: g.kept_count for g in live},
               err_calib={g.id: g.err_calib for g in live}, err_holdout={g.id: g.err_holdout for g in live})
    return rec


def wait_for(path, timeout_s, poll_s=60) -> bool:
    """True once `path` exists, has the same size on two polls 10 s apart and loads as ONNX."""
    import onnx
    deadline = time.time() + timeout_s
    while True:
        if os.path.exists(path):
            size = os.path.getsize(path)
            time.sleep(10)
            if os.path.getsize(path) == size:
                try:
                    onnx.load(path)
                    return True
                except Exception:
                    pass
        if time.time() + poll_s > deadline:
            return False
        print(f"  waiting for {path} ...", flush=True)
        time.sleep(poll_s)


def quality(name, path, levels, rows, partial=None) -> list[dict]:
    """Every row at every level; each record is also appended to `partial` (JSON lines) as it lands."""
    out = []
    for flops in levels:
        for r in rows:
            rec = run_row(path, *r, flops)
            out.append({"model": name, **rec})
            if partial:
                with open(partial, "a") as f:
                    f.write(json.dumps(out[-1], default=float) + "\n")
            if "error" in rec:
                print(f"  {name} {flops} {rec['row']}: FAILED {rec['error']}", flush=True)
            else:
                print(f"  {name} {flops} {rec['row']:<32} acc {rec['accuracy_pruned']:.4f} "
                      f"macs {rec['macs_ratio']:.3f} {rec['prune_wall_s']:.1f}s  load {loadavg()[0]:.2f}",
                      flush=True)
    return out


# ---------------------------------------------------------------- cost (fresh subprocess per run)

def cost_child(model, calib, out, allocate):
    """Runs in its own process: prune, save to `out`, print one JSON line with time and peak RSS."""
    import onnxruntime  # noqa: F401  (imported up front so "after import" is the fixed baseline)
    import torch  # noqa: F401

    from onnxprune import prune, save_model
    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    pruned, rep = prune(model, calib, method="greedy-local", refit="full", flops=0.5, allocate=allocate, quiet=True)
    wall = time.perf_counter() - t0
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    save_model(pruned, out)
    print(json.dumps({"prune_wall_s": wall, "peak_rss_mb": peak / 1024, "rss_after_import_mb": rss_import / 1024,
                      "macs_ratio": rep.macs_ratio, "calibration_samples": rep.calibration_samples}))


def cost(sizes, tmp, allocations=("loss", "uniform")) -> list[dict]:
    from models.fmnist_data import load_fmnist
    from onnxprune.report.evaluate import compare
    x, y = load_fmnist("train")  # float32 [0, 1], exactly what fmnist_calib.npz holds
    out, files = [], {}
    for n in sizes:
        # same recipe as models/train_common.py (seed 0, sorted); n=512 reproduces fmnist_calib.npz
        idx = np.sort(np.random.default_rng(0).choice(len(x), n, replace=False))
        files[n] = os.path.join(tmp, f"calib{n}.npz")
        np.savez(files[n], input=x[idx], labels=y[idx])
    for allocate in allocations:
        for n in sizes:
            pruned = os.path.join(tmp, f"pruned_{allocate}{n}.onnx")
            t0, load0 = time.perf_counter(), loadavg()
            # /usr/bin/time forks the child afresh: Linux carries the spawning process's peak RSS over
            # exec, so a child spawned straight from this (large) process would report our peak, not its own
            res = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "bench.quality", "--cost-child",
                                  MODELS["fmnist_resnet"], files[n], pruned, allocate],
                                 cwd=ROOT, capture_output=True, text=True)
            rec = {"calibration_images": n, "allocate": allocate}
            if res.returncode:
                out.append({**rec, "error": res.stderr.strip()[-2000:]})
                continue
            rec.update(json.loads(res.stdout.strip().splitlines()[-1]), **time_v(res.stderr),
                       subprocess_wall_s=time.perf_counter() - t0, loadavg_before=load0, loadavg_after=loadavg())
            rec.update({k: v for k, v in compare(MODELS["fmnist_resnet"], pruned, TEST).items()
                        if k in ("accuracy_pruned", "agreement", "kl")})
            print(f"  cost {allocate} n={n}: prune {rec['prune_wall_s']:.1f}s (process CPU "
                  f"{rec['process_cpu_s']:.0f}s), peak RSS {rec['peak_rss_mb']:.0f} MB (after import "
                  f"{rec['rss_after_import_mb']:.0f} MB), acc {rec['accuracy_pruned']:.4f}", flush=True)
            out.append(rec)
    return out


# ---------------------------------------------------------------- output

def tables(results) -> str:
    ok = [r for r in results if "error" not in r]
    long = format_table(
        ["model", "MACs tgt", "row", "MACs", "params", "acc", "Δacc", "agree", "KL", "wall s", "cpu s"],
        [[r["model"], r["flops"], r["row"], f"{r['macs_ratio']:.3f}", f"{r['params_ratio']:.3f}",
          f"{r['accuracy_pruned']:.4f}", f"{100 * (r['accuracy_pruned'] - r['accuracy_original']):+.2f}",
          f"{r['agreement']:.4f}", f"{r['kl']:.4f}", f"{r['prune_wall_s']:.1f}", f"{r['prune_cpu_s']:.1f}"]
         for r in ok])
    parts = [long]
    for model in dict.fromkeys(r["model"] for r in results):
        mine = [r for r in results if r["model"] == model]
        levels = sorted({r["flops"] for r in mine}, reverse=True)
        acc = {(r["row"], r["flops"]): ("FAIL" if "error" in r else f"{100 * r['accuracy_pruned']:.2f}")
               for r in mine}
        orig = next((r["accuracy_original"] for r in mine if "error" not in r), float("nan"))
        rows = [[row] + [acc.get((row, f), "") for f in levels] for row in dict.fromkeys(r["row"] for r in mine)]
        parts.append(f"{model}: test accuracy % (original {100 * orig:.2f}) by MACs target\n"
                     + format_table(["row"] + [str(f) for f in levels], rows))
    return "\n\n".join(parts)


def plot(results, model, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = dict(zip(["greedy-local", "greedy-convex", "gfs", "magnitude", "random", "torch-pruning-l1",
                       "torch-pruning-taylor", "greedy-taylor", "greedy-combined", "greedy-global", "taylor",
                       "greedy-omp"],
                      ["C0", "C2", "C4", "C1", "C7", "C3", "C5", "C6", "C8", "C9", "y", "m"]))
    styles = {"full": "-", "gamma": "-.", "none": ":"}
    mine = [r for r in results if r["model"] == model and "error" not in r]
    orig = 100 * mine[0]["accuracy_original"] if mine else None
    fig, axes = plt.subplots(1, 2, figsize=(13, 6.5))
    for ax in axes:
        for row in dict.fromkeys(r["row"] for r in mine):
            pts = sorted((r["macs_ratio"], 100 * r["accuracy_pruned"]) for r in mine if r["row"] == row)
            r0 = next(r for r in mine if r["row"] == row)
            ax.plot(*zip(*pts), styles.get(r0["refit"], "--"), color=colors.get(r0["method"]), label=row, lw=1.6,
                    marker="o" if r0["allocate"] == "loss" else "s", ms=5)
        if orig is not None:
            ax.axhline(orig, ls="--", color="k", lw=1, label="original")
        ax.set(xlabel="MACs kept (achieved fraction)", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
    if orig is not None:
        axes[1].set_ylim(orig - 12, orig + 1)
    axes[0].set_title("all rows", fontsize=9)
    axes[1].set_title("zoom: within 12 points of the original", fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, ncol=5, loc="lower center")
    fig.suptitle(f"{model}: pruned, no finetuning (512 calibration images); line: refit (solid full, "
                 "dash-dot gamma, dotted none); marker: allocation (o loss, s uniform)", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/quality[_quick].json)")
    ap.add_argument("--wait-mobilenet", type=float, default=25 * 60, help="seconds to wait for the MobileNet")
    ap.add_argument("--replot", action="store_true",
                    help="only redraw the plots from --out (the local plots also show the --rows omp results)")
    ap.add_argument("--levels", default=None, help="comma-separated MACs fractions (default 0.7,0.5,0.3)")
    ap.add_argument("--rows", choices=("local", "global", "omp"), default="local",
                    help="local: issue-4 rows (default); global: global-imitation rows beside greedy-local; "
                         "omp: greedy-omp rows (shown with the local rows in the README)")
    ap.add_argument("--cost-child", nargs=4, metavar=("MODEL", "CALIB", "OUT", "ALLOCATE"), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    os.chdir(ROOT)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.cost_child:
        return cost_child(*args.cost_child)
    suffix = ("_quick" if args.quick else "") + ("" if args.rows == "local" else f"_{args.rows}")
    out = args.out or f"bench/results/quality{suffix}.json"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stem = os.path.splitext(out)[0]
    if args.replot:
        results = json.load(open(out))["results"] + torch_pruning_rows()
        if args.rows == "local" and os.path.exists(f"{stem}_omp.json"):  # greedy-omp rows, measured apart
            results += json.load(open(f"{stem}_omp.json"))["results"]
        for m in dict.fromkeys(r["model"] for r in results):
            plot(results, m, f"{stem}_{m}.png")
        return
    levels, rows = ((0.5,), QUICK_ROWS) if args.quick else \
        (LEVELS, {"local": ROWS, "global": GLOBAL_ROWS, "omp": OMP_ROWS}[args.rows])
    if args.levels:
        levels = tuple(float(v) for v in args.levels.split(","))
    models = ["fmnist_resnet"] if args.quick else list(MODELS)
    info = machine_info("prune + eval on CPU, shared machine: wall times are noisy; cpu s = process CPU time")
    t_start, results, notes, cost_rows = time.perf_counter(), [], [], []
    for name in models:
        path = MODELS[name]
        if not os.path.exists(path) or name == "fmnist_mobilenet":
            if not wait_for(path, 0 if name == "fmnist_resnet" else args.wait_mobilenet):
                notes.append(f"{path} not available (waited {args.wait_mobilenet:.0f}s); skipped")
                print(notes[-1], flush=True)
                continue
        print(f"{name}: {len(levels)} levels x {len(rows)} rows", flush=True)
        results += quality(name, path, levels, rows, partial=f"{stem}.partial.jsonl")
        if name == "fmnist_resnet" and args.rows == "local":  # cost runs between the models
            print("cost: greedy-local+full at 0.5 on the ResNet, fresh subprocess per run", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                cost_rows = cost((512,) if args.quick else (512, 4096), tmp)
    total = time.perf_counter() - t_start
    print("\n" + tables(results))
    print("\n" + format_table(["allocate", "calib images", "prune wall s", "process CPU s", "peak RSS MB",
                               "RSS after import MB", "acc"],
                              [[c["allocate"], c["calibration_images"], f"{c['prune_wall_s']:.1f}",
                                f"{c.get('process_cpu_s', 0):.0f}", f"{c['peak_rss_mb']:.0f}",
                                f"{c['rss_after_import_mb']:.0f}", f"{c['accuracy_pruned']:.4f}"]
                               for c in cost_rows if "error" not in c]))
    print(f"\ntotal run time {total:.0f}s, load average {loadavg()}")
    info["loadavg_end"] = loadavg()
    plots = {m: f"{stem}_{m}.png" for m in dict.fromkeys(r["model"] for r in results)}
    for m, p in plots.items():
        plot(results + torch_pruning_rows(), m, p)
    with open(out, "w") as f:
        json.dump({"machine": info, "total_s": total, "notes": notes, "calibration": CALIB, "test": TEST,
                   "results": results, "cost": cost_rows, "plots": plots}, f, indent=1, default=float)
    print(f"wrote {out} and {', '.join(plots.values())}")


if __name__ == "__main__":
    main()
