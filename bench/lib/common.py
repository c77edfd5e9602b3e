"""Reusable benchmark helpers: machine info, ONNX Runtime CPU sessions, interleaved timing (the timing
helpers are the library's, `onnxprune.latency.runtime`, which `onnxprune bench` uses)."""
from __future__ import annotations

import datetime
import json
import os
import platform
import time

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.latency import runtime as _runtime
from onnxprune.latency.runtime import cores, cpu_model, loadavg, summarize

__all__ = ["cores", "cpu_model", "loadavg", "summarize"]


def now() -> str:
    """The local time with its offset, to the second (a bench record's `date`)."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def machine_info(note: str = "") -> dict:
    return {"date": now(),
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "cpu_model": cpu_model(), "cores": cores(),
            "loadavg_start": loadavg(), "note": note}


def make_session(model, threads: int | None = None) -> ort.InferenceSession:
    """CPU session (ORT_ENABLE_ALL, sequential, intra-op threads = cores) from a path or ModelProto."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def random_feed(sess: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs; the first (symbolic) dim is the batch, other symbolic dims become 1."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(inp.shape)]
        feed[inp.name] = rng.standard_normal(shape).astype(_DTYPES[inp.type])
    return feed


def time_interleaved(runs: dict, repeats: int, warmup: int = 3) -> dict[str, np.ndarray]:
    """Wall time (ms) of each callable in `runs` (any return value), interleaved round-robin with the start
    position rotating each round (`onnxprune.latency.runtime.time_interleaved` on timed wrappers)."""
    def timed(fn):
        def run() -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return run
    return _runtime.time_interleaved({k: timed(f) for k, f in runs.items()}, repeats, warmup)


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def time_v(stderr: str) -> dict:
    """Peak RSS and process CPU time of a child run under `/usr/bin/time -v` (parsed from its stderr)."""
    tv = dict(line.strip().rsplit(": ", 1) for line in stderr.splitlines() if ": " in line)
    return {"time_v_max_rss_mb": int(tv["Maximum resident set size (kbytes)"]) / 1024,
            "process_cpu_s": float(tv["User time (seconds)"]) + float(tv["System time (seconds)"])}


def torch_pruning_rows(path: str = "bench/results/torch_pruning.json") -> list[dict]:
    """Torch-Pruning's rows (bench/torch_pruning_*.py), shaped like ours, for plots and tables."""
    if not os.path.exists(path):
        return []
    return [dict(r, row=f"{r['row']} (uniform ratio)", method=r["row"], refit="none", allocate="uniform")
            for r in json.load(open(path))["results"] if "error" not in r]


def write_json(path: str, doc: dict, total_s: float) -> None:
    """The benchmark's JSON (floats from numpy included), its folder made when missing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=float)
    print(f"wrote {path} ({total_s:.0f}s)")
