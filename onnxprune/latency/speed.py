"""Measured latency of models side by side: `compare` (what `onnxprune bench` prints) and `speedup` (the
check of a pruned model against its original) (docs/DESIGN.md, "Latency")."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from .runtime import Timer, feeds, loadavg, summarize, time_budgeted, time_interleaved


def compare(timer: Timer, models: Mapping[str, onnx.ModelProto], batch: int, example: dict | None = None,
            rounds: int | None = None, warmup: int = 3, budget_ms: float = 2000.0) -> list[dict]:
    """Latency and throughput of every model at one batch size, timed interleaved; the ratio to the first
    model is the median over rounds of first/this (both timed in the same round). `rounds` None: as many
    as fit in about `budget_ms` per model (5 to 50)."""
    runs = {name: timer.runner(m, feeds(m, batch, example)) for name, m in models.items()}
    load0 = loadavg()
    if rounds is None:
        times = time_budgeted(runs, min_rounds=5, max_rounds=50, budget_ms=budget_ms, warmup=warmup)
    else:
        times = time_interleaved(runs, rounds, warmup)
    load1 = loadavg()
    first = next(iter(models))
    rows = []
    for name in models:
        s = summarize(times[name])
        rows.append({"model": name, "batch": batch, **s, "throughput_per_s": batch * 1e3 / s["median_ms"],
                     "ratio_to_first": float(np.median(times[first] / times[name])),
                     "loadavg_before": load0, "loadavg_after": load1})
    return rows


def speedup(timer: Timer, original: onnx.ModelProto, pruned: onnx.ModelProto, batch: int,
            example: dict | None = None, budget_ms: float = 1500.0) -> dict:
    """Original against pruned, interleaved: medians and the median of the paired ratios
    (original/pruned per round). When the ratio is within 3% of 1, the rounds are doubled once."""
    feed = feeds(original, batch, example)
    runs = {"original": timer.runner(original, feed), "pruned": timer.runner(pruned, feed)}
    times = time_budgeted(runs, min_rounds=7, max_rounds=60, budget_ms=budget_ms)
    ratio = float(np.median(times["original"] / times["pruned"]))
    if abs(ratio - 1) < 0.03:
        more = time_interleaved(runs, len(times["original"]), 0)
        times = {k: np.concatenate([times[k], more[k]]) for k in times}
        ratio = float(np.median(times["original"] / times["pruned"]))
    return {"original_ms": float(np.median(times["original"])), "pruned_ms": float(np.median(times["pruned"])),
            "speedup": ratio, "rounds": int(len(times["original"]))}
