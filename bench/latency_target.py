"""Pruning to a measured latency: the latency model's error, what the targets reach, and accuracy at equal
latency, on the ImageNet MobileNetV2 (torchvision weights), ONNX Runtime CPU.

    python -m bench.latency_target [--sections model,speed,accuracy] [--threads 2] [--quick]
                                   [--out bench/results/latency_target.json]

model: latency tables (`onnxprune.latency.build_table`, measured afresh) at batch 1 and 32, with the wall
    clock at --threads intra-op threads and with the CPU-time clock at one thread (the work of a run,
    which other processes on a shared machine do not inflate); then 20 random allocations of the tables'
    fast widths, each pruned (stand-in channels) and timed interleaved with the original by the same
    clock: predicted against measured (fastest round, the tables' statistic; and median), for the latency
    model and for the additive model (no interaction terms). Build time of each table.
speed: the original, magnitude-pruned models at 50% MACs with round-to 1, 8, 16 and the default (auto),
    `--latency 0.5` at latency batch 1 and at 32 (uniform allocation), and Torch-Pruning's L1 model at the
    same MACs (uniform ratio, bench/lib/torch_pruning.py), all timed side by side at batch 1 and 32 in one
    run (medians of interleaved rounds; speed-up = median of the paired original/pruned ratios). Prune wall
    time of each (what round-to auto's probe and check and the latency table cost).
accuracy: the ImageNet sample (/work/shared/imagenet-sample, one photo per even class, the class in the
    file name), two folds: calibrate on the classes = 0 (mod 4) and evaluate top-1 against the labels on
    the classes = 2 (mod 4), then the reverse. Per fold, with the default method (greedy-local, full re-fit,
    uniform allocation, round-to auto): `--flops 0.5`; its measured latency ratio L at batch 1; then
    `--latency L` (uniform and loss allocation), i.e. at equal measured latency; all timed side by side.

Every section records the load average before and after. The machine this was written on was shared
(2 cores, other jobs running), so wall-clock numbers there are noisy: re-run on a quiet machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.lib.common import format_table, loadavg, machine_info, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "results", "latency_target.json")
SAMPLE = "/work/shared/imagenet-sample"


def _model_path() -> str:
    from models.imagenet_weights import export
    return export()


# ------------------------------------------------------------------------------------------ a. model
def random_allocations(lm, n: int, seed: int = 0) -> list[dict[int, int]]:
    """Per allocation one level in [0.3, 1], per group the fast width nearest level x C x U(0.8, 1.2)."""
    rng = np.random.default_rng(seed)
    allowed = lm.allowed()
    out = []
    for _ in range(n):
        level = rng.uniform(0.3, 1.0)
        counts = {}
        for gid, c in zip(lm.gids, lm.channels):
            want = level * c * rng.uniform(0.8, 1.2)
            counts[gid] = int(allowed[gid][np.argmin(np.abs(allowed[gid] - want))])
        out.append(counts)
    return out


def model_section(path: str, threads: int, quick: bool) -> list[dict]:
    from onnxprune import analyze
    from onnxprune.latency import LatencyModel, OrtTimer, Runtime, build_table, feeds, time_interleaved
    from onnxprune.latency.subgraph import variant
    a = analyze(path)
    rows = []
    for batch in ((1,) if quick else (1, 32)):
        for clock, nthreads in (("wall", threads), ("cpu", 1)):
            timer = OrtTimer(Runtime(threads=nthreads, clock=clock))
            load0 = loadavg()
            table = build_table(a, timer, batch, use_cache=False)
            lm = LatencyModel(a, table)
            allocs = random_allocations(lm, 6 if quick else 20, seed=batch)
            feed = feeds(a.model, batch)
            runs = {"original": timer.runner(a.model, feed)}
            for i, c in enumerate(allocs):
                runs[i] = timer.runner(variant(a, c), feed)
            rounds = (3 if quick else 7) if batch > 1 else (10 if quick else 25)
            times = time_interleaved(runs, rounds, 2)
            errs = []
            for i, c in enumerate(allocs):
                v = lm.vector(c)
                fastest, median = float(np.min(times[i])), float(np.median(times[i]))
                errs.append({"predicted_ms": float(lm(v)), "additive_ms": float(lm.additive(v)), "fastest_ms": fastest,
                             "median_ms": median, "counts": {str(g): n for g, n in c.items()}})
            e = np.array([r["predicted_ms"] / r["fastest_ms"] - 1 for r in errs])
            ea = np.array([r["additive_ms"] / r["fastest_ms"] - 1 for r in errs])
            em = np.array([r["predicted_ms"] / r["median_ms"] - 1 for r in errs])
            row = {"batch": batch, "clock": clock, "threads": nthreads, "build_s": table.build_s,
                   "groups": len(table.groups), "widths": sum(len(t.widths) for t in table.groups.values()),
                   "interactions_in_context": len(table.cross), "table_full_ms": table.full_ms,
                   "original_fastest_ms": float(np.min(times["original"])),
                   "original_median_ms": float(np.median(times["original"])),
                   "median_abs_err": float(np.median(np.abs(e))), "max_abs_err": float(np.max(np.abs(e))),
                   "mean_err": float(np.mean(e)), "median_abs_err_additive": float(np.median(np.abs(ea))),
                   "median_abs_err_vs_median": float(np.median(np.abs(em))), "allocations": errs,
                   "loadavg_before": load0, "loadavg_after": loadavg()}
            rows.append(row)
            print(f"  batch {batch} {clock} clock ({nthreads} threads): table {table.build_s:.0f}s, "
                  f"error median {row['median_abs_err']:.1%} (max {row['max_abs_err']:.1%}, "
                  f"mean {row['mean_err']:+.1%}), additive {row['median_abs_err_additive']:.1%}; "
                  f"load {load0[0]:.1f} -> {loadavg()[0]:.1f}",
                  flush=True)
    return rows


# ------------------------------------------------------------------------------------------ b. speed
def _tp_model(path: str, flops: float):
    """Torch-Pruning L1, one uniform ratio bisected to the MACs (bench/lib/torch_pruning.py), exported."""
    import torch

    from bench.lib.torch_pruning import export_proto, prune_tp
    from models.build_mobilenetv2_224 import build
    from models.imagenet_weights import weights_path
    base = build(weights_path()).eval()
    example = torch.zeros(1, 3, 224, 224)
    pruned, ratio, tp_ratio = prune_tp(base, "l1", flops, None, example=example)
    return export_proto(pruned, example), {"pruning_ratio": ratio, "tp_macs_ratio": tp_ratio}


def _side_by_side(models: dict, threads: int, rounds: dict[int, int]) -> list[dict]:
    from onnxprune.latency import OrtTimer, Runtime
    from onnxprune.latency.speed import compare
    timer = OrtTimer(Runtime(threads=threads))
    rows = []
    for batch in (1, 32):
        got = compare(timer, models, batch, rounds=rounds[batch], warmup=2)
        for r in got:
            r["speedup"] = r.pop("ratio_to_first")
        rows += got
    return rows


def speed_section(path: str, threads: int, quick: bool) -> dict:
    from onnxprune import load_model, prune
    from onnxprune.analysis.cost import model_macs
    original = load_model(path)
    macs0 = model_macs(original)
    models, info = {"original": original}, {"original": {"macs_ratio": 1.0, "prune_s": 0.0}}
    configs = [("flops 0.5, round-to 1", {"flops": 0.5, "round_to": 1}),
               ("flops 0.5, round-to 8", {"flops": 0.5, "round_to": 8}),
               ("flops 0.5, round-to 16", {"flops": 0.5, "round_to": 16}),
               ("flops 0.5, default (round-to auto)", {"flops": 0.5}),
               ("latency 0.5 (latency batch 1)", {"latency": 0.5, "latency_batch": 1}),
               ("latency 0.5 (latency batch 32)", {"latency": 0.5, "latency_batch": 32})]
    for name, kw in configs:
        t0 = time.perf_counter()
        m, rep = prune(path, method="magnitude", latency_threads=threads, **kw)
        info[name] = {"macs_ratio": rep.macs_ratio, "prune_s": time.perf_counter() - t0, "options": kw,
                      "latency": rep.latency, "counts": {str(g.id): g.kept_count for g in rep.groups}}
        models[name] = m
        print(f"  {name}: MACs {rep.macs_ratio:.3f}, prune {info[name]['prune_s']:.1f}s", flush=True)
    try:
        t0 = time.perf_counter()
        tp, extra = _tp_model(path, 0.5)
        models["Torch-Pruning L1, 50% MACs"] = tp
        info["Torch-Pruning L1, 50% MACs"] = {"macs_ratio": model_macs(tp) / macs0, "prune_s": time.perf_counter() - t0,
                                              **extra}
    except ImportError as exc:
        print(f"  Torch-Pruning not installed ({exc}): its row is skipped", flush=True)
    load0 = loadavg()
    rows = _side_by_side(models, threads, {1: 10 if quick else 40, 32: 4 if quick else 12})
    for r in rows:
        r.update(macs_ratio=info[r["model"]]["macs_ratio"], prune_s=info[r["model"]]["prune_s"])
    return {"rows": rows, "models": info, "loadavg_before": load0, "loadavg_after": loadavg()}


# --------------------------------------------------------------------------------------- c. accuracy
def _folder(tmp: Path, residue: int) -> Path:
    d = tmp / f"classes_{residue}_mod_4"
    d.mkdir()
    for f in sorted(Path(SAMPLE).glob("*.jpg")):
        if int(f.name[:3]) % 4 == residue:
            (d / f.name).symlink_to(f)
    return d


def _images(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from onnxprune.calibration.images import image_items
    files = sorted(folder.glob("*.jpg"))
    x = np.concatenate([item["input"] for item in image_items(files, "input", (1, 3, 224, 224), "imagenet")])
    return x, np.array([int(f.name[:3]) for f in files])


def _top1(model, x: np.ndarray, y: np.ndarray) -> float:
    from bench.lib.imagenet import logits
    return float((logits(model, x).argmax(1) == y).mean())


def accuracy_section(path: str, threads: int, quick: bool) -> list[dict]:
    from onnxprune import load_model, prune
    from onnxprune.latency import Runtime, default_timer
    from onnxprune.latency.speed import speedup
    original = load_model(path)
    folds = []
    with tempfile.TemporaryDirectory(prefix="latency-target-") as tmp:
        dirs = {r: _folder(Path(tmp), r) for r in (0, 2)}
        for calib, held in ((0, 2), (2, 0)):
            x, y = _images(dirs[held])
            if quick:
                x, y = x[:40], y[:40]
            fold = {"calibration_classes": f"= {calib} (mod 4)", "evaluation_classes": f"= {held} (mod 4)",
                    "calibration_images": len(list(dirs[calib].glob("*.jpg"))), "evaluation_images": len(y),
                    "top1_original": _top1(original, x, y), "rows": []}
            models = {"original": original}
            t0 = time.perf_counter()
            # uniform: the default allocation when this section was measured (before --allocate auto)
            m, rep = prune(path, str(dirs[calib]), flops=0.5, allocate="uniform", preprocess="imagenet",
                           latency_threads=threads)
            flops_s = time.perf_counter() - t0
            ratio = 1.0 / speedup(default_timer(Runtime(threads=threads)), original, m, 1)["speedup"]
            fold["latency_of_flops_model"] = ratio
            runs = [("flops 0.5 (uniform)", m, rep, flops_s)]
            for allocate in ("uniform", "loss"):
                t0 = time.perf_counter()
                lm, lrep = prune(path, str(dirs[calib]), latency=round(ratio, 3), allocate=allocate,
                                 preprocess="imagenet", latency_threads=threads)
                runs.append((f"latency {ratio:.3f} ({allocate})", lm, lrep, time.perf_counter() - t0))
            for name, model, r, secs in runs:
                models[name] = model
                fold["rows"].append({"row": name, "macs_ratio": r.macs_ratio, "top1": _top1(model, x, y),
                                     "prune_s": secs, "latency": r.latency,
                                     "counts": {str(g.id): g.kept_count for g in r.groups}})
                print(f"  fold calib {calib} mod 4: {name}: MACs {r.macs_ratio:.3f}, "
                      f"top-1 {fold['rows'][-1]['top1']:.3f} (original {fold['top1_original']:.3f}), "
                      f"prune {secs:.0f}s", flush=True)
            fold["speed"] = _side_by_side(models, threads, {1: 10 if quick else 30, 32: 3 if quick else 8})
            folds.append(fold)
    return folds


# ------------------------------------------------------------------------------------------- report
def print_tables(doc: dict) -> None:
    if "model" in doc:
        print("\n" + format_table(
            ["batch", "clock", "threads", "table s", "error median", "error max", "error mean", "additive median"],
            [[r["batch"], r["clock"], r["threads"], f"{r['build_s']:.0f}", f"{r['median_abs_err']:.1%}",
              f"{r['max_abs_err']:.1%}", f"{r['mean_err']:+.1%}", f"{r['median_abs_err_additive']:.1%}"]
             for r in doc["model"]["rows"]]))
    if "speed" in doc:
        print("\n" + format_table(["model", "batch", "MACs", "median ms", "speed-up", "prune s"],
                                  [[r["model"], r["batch"], f"{r['macs_ratio']:.3f}", f"{r['median_ms']:.2f}",
                                    f"{r['speedup']:.2f}x", f"{r['prune_s']:.0f}"] for r in doc["speed"]["rows"]]))
    if "accuracy" in doc:
        for f in doc["accuracy"]["folds"]:
            sp = {(r["model"], r["batch"]): r["speedup"] for r in f["speed"]}
            print(f"\ncalibration classes {f['calibration_classes']}, evaluation {f['evaluation_classes']} "
                  f"({f['evaluation_images']} images), original top-1 {f['top1_original']:.3f}")
            print(format_table(["row", "MACs", "top-1", "speed-up b1", "speed-up b32", "prune s"],
                               [[r["row"], f"{r['macs_ratio']:.3f}", f"{r['top1']:.3f}", f"{sp[r['row'], 1]:.2f}x",
                                 f"{sp[r['row'], 32]:.2f}x", f"{r['prune_s']:.0f}"] for r in f["rows"]]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="model,speed,accuracy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help="batch 1 only in the model section; fewer allocations, rounds and evaluation images")
    ap.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                    help="what the prunes measure: wall time at --threads (as a user's run), or the CPU time of "
                         "one thread (ONNXPRUNE_TIMER=cpu: robust on a shared machine); the side-by-side timings "
                         "are wall time at --threads either way")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    if args.timer == "cpu":
        os.environ["ONNXPRUNE_TIMER"] = "cpu"
    os.chdir(ROOT)
    path = _model_path()
    sections = args.sections.split(",")
    doc: dict = {}
    if os.path.exists(args.out):  # sections not run this time stay as they were
        import json
        with open(args.out) as f:
            doc = json.load(f)
    doc["machine"] = machine_info(f"intra-op threads {args.threads}; shared machine: wall times are noisy")
    doc["prune_timer"] = args.timer
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="latency-cache-") as cache:
        os.environ["ONNXPRUNE_CACHE_DIR"] = cache   # every table measured in this run, its cost included
        for name, fn in (("model", model_section), ("speed", speed_section), ("accuracy", accuracy_section)):
            if name not in sections:
                continue
            print(f"{name}:", flush=True)
            t0, load0 = time.perf_counter(), loadavg()
            got = fn(path, args.threads, args.quick)
            doc[name] = {"total_s": time.perf_counter() - t0, "loadavg_before": load0, "loadavg_after": loadavg(),
                         **({"rows": got} if name == "model" else {"folds": got} if name == "accuracy" else got)}
            write_json(args.out, {**doc, "machine": {**doc["machine"], "loadavg_end": loadavg()}},
                       time.perf_counter() - t_all)
    print_tables(doc)


if __name__ == "__main__":
    main()
