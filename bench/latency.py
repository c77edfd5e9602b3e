"""ONNX Runtime CPU latency of original vs pruned models, side by side.

    python bench/latency.py [--out bench/results/latency.json] [--repeats N] [--quick]

Models: models/fmnist_resnet.onnx and a random-weight 224x224 MobileNetV2 exported by
models/build_mobilenetv2_224.py into a temp dir.  Each is pruned (magnitude) to flops
0.5, 0.7, 0.3 (--quick: 0.5) with round_to 1 and 8; original and all pruned variants are timed
interleaved at batch 1 and 32 (median, p10, p90 after warm-up).  speed-up = median(orig) /
median(pruned); "paired" = median over rounds of orig/pruned from the same round.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.lib.common import (
    cores,
    format_table,
    loadavg,
    machine_info,
    make_session,
    random_feed,
    summarize,
    time_interleaved,
)
from onnxprune import UserError, load_model, prune

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = (1, 32)


def build_mobilenet(tmp: str) -> str:
    path = os.path.join(tmp, "mobilenetv2_224.onnx")
    subprocess.run([sys.executable, "-m", "models.build_mobilenetv2_224", path], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return path


def variants(model, levels, round_tos):
    """[(flops, round_to, pruned ModelProto | None, report | error str)] for every level."""
    out = []
    for rt in round_tos:
        for f in levels:
            try:
                pruned, rep = prune(model, method="magnitude", flops=f, round_to=rt)
                out.append((f, rt, pruned, rep))
            except UserError as e:
                out.append((f, rt, None, str(e)))
    return out


def bench_model(name: str, path: str, levels, round_tos, repeats: int, warmup: int) -> list[dict]:
    orig = load_model(path)
    vs = variants(orig, levels, round_tos)
    sessions = {"orig": make_session(orig)}
    for f, rt, pruned, _ in vs:
        if pruned is not None:
            sessions[f"{f}/{rt}"] = make_session(pruned)
    rows = []
    for batch in BATCHES:
        feeds = {k: random_feed(s, batch) for k, s in sessions.items()}
        ref_shapes = [o.shape for o in sessions["orig"].run(None, feeds["orig"])]
        for k, s in sessions.items():  # sanity: pruned graphs keep the output shapes
            assert [o.shape for o in s.run(None, feeds[k])] == ref_shapes, (name, k)
        runs = {k: (lambda s=s, fd=feeds[k]: s.run(None, fd)) for k, s in sessions.items()}
        print(f"  timing {name} batch {batch}: {len(runs)} sessions x {repeats} rounds", flush=True)
        times = time_interleaved(runs, repeats, warmup)
        stats = {k: summarize(t) for k, t in times.items()}
        o = stats["orig"]
        for f, rt, pruned, rep in vs:
            row = {"model": name, "flops_target": f, "round_to": rt, "batch": batch}
            if pruned is None:
                rows.append({**row, "skipped": rep})
                continue
            p = stats[f"{f}/{rt}"]
            rows.append({**row, "macs_before": rep.macs_before, "macs_after": rep.macs_after,
                         "macs_ratio": rep.macs_after / rep.macs_before,
                         "params_before": rep.params_before, "params_after": rep.params_after,
                         "params_ratio": rep.params_after / rep.params_before,
                         "original": o, "pruned": p,
                         "throughput_original": batch * 1e3 / o["median_ms"],
                         "throughput_pruned": batch * 1e3 / p["median_ms"],
                         "speedup": o["median_ms"] / p["median_ms"],
                         # median over rounds of orig/pruned timed in the same round (drift-paired)
                         "speedup_paired": float(np.median(times["orig"] / times[f"{f}/{rt}"]))})
    return rows


def table(rows: list[dict]) -> str:
    def ms(s):
        return f"{s['median_ms']:.2f} [{s['p10_ms']:.2f}-{s['p90_ms']:.2f}]"
    out = []
    for r in rows:
        head = [r["model"], r["flops_target"], r["round_to"], r["batch"]]
        if "skipped" in r:
            out.append(head + ["skipped: " + r["skipped"][:60]] + [""] * 7)
            continue
        out.append(head + [f"{r['macs_ratio']:.3f}", f"{r['params_ratio']:.3f}", ms(r["original"]),
                           ms(r["pruned"]), f"{r['throughput_original']:.0f}",
                           f"{r['throughput_pruned']:.0f}", f"{r['speedup']:.2f}x", f"{r['speedup_paired']:.2f}x"])
    return format_table(["model", "flops", "round", "batch", "MACs", "params", "orig ms [p10-p90]",
                         "pruned ms [p10-p90]", "orig/s", "pruned/s", "speed-up", "paired"], out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "latency.json"))
    ap.add_argument("--repeats", type=int, help="timed rounds per batch size (default 40, quick 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="flops 0.5 only, round_to 1 and 8, 5 rounds")
    args = ap.parse_args()
    repeats = args.repeats or (5 if args.quick else 40)
    levels = [0.5] if args.quick else [0.5, 0.7, 0.3]
    round_tos = [1, 8]
    fmnist = os.path.join(ROOT, "models", "fmnist_resnet.onnx")
    if not os.path.exists(fmnist):
        sys.exit(f"{fmnist} missing: train it with models/fmnist_resnet.py first")

    t0 = time.time()
    info = machine_info(note=f"{cores()} cores, shared with other processes; intra_op_num_threads={cores()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        print("building MobileNetV2 224 ...", flush=True)
        models = [("fmnist_resnet", fmnist), ("mobilenetv2_224", build_mobilenet(tmp))]
        for name, path in models:
            rows += bench_model(name, path, levels, round_tos, repeats, args.warmup)
    info["loadavg_end"] = loadavg()
    elapsed = time.time() - t0

    print()
    print(table(rows))
    print(f"\n{info['cpu_model']}, {info['cores']} cores (shared), onnxruntime {info['onnxruntime']}; "
          f"{repeats} interleaved rounds, {args.warmup} warm-up; benchmark took {elapsed:.0f} s")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"machine": info, "settings": {"repeats": repeats, "warmup": args.warmup,
                                                 "batches": list(BATCHES), "levels": levels,
                                                 "round_to": round_tos, "method": "magnitude",
                                                 "intra_op_num_threads": cores(),
                                                 "graph_optimization": "ORT_ENABLE_ALL",
                                                 "quick": args.quick},
                   "runtime_s": elapsed, "results": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
