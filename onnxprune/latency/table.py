"""Per-group latency tables, measured on the target runtime and cached on disk (docs/DESIGN.md,
"Latency").

For every group the table holds the measured time of the group's cut (`subgraph.cut`: the nodes its
width acts on) at a grid of widths, every other group at full width, timed interleaved; for every two
groups whose cuts share nodes, the time of the shared nodes at full width; the whole model's time and
the time of an empty run (the per-run overhead). `LatencyModel` (`model.py`) predicts any allocation
from these. Tables are cached under `$ONNXPRUNE_CACHE_DIR/latency` (default `~/.cache/onnxprune`), keyed
by the model's structure (not its weights), the timer and runtime (provider, threads, precision, ONNX
Runtime version, CPU), the batch, the input shapes and the widths asked for.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..analysis import Analysis, Group
from ..calibration.taps import Tap
from ..errors import UserError
from .runtime import Runner, Timer, feeds, loadavg, time_budgeted
from .subgraph import cut, elem_types, touching, variant

log = logging.getLogger("onnxprune")
CACHE_ENV = "ONNXPRUNE_CACHE_DIR"
GRID_POINTS = 16   # at most this many widths per group in the default grid
FORMAT = 1


class NotMeasurable(UserError):
    """The model cannot be timed: no inputs can be made for it, or ONNX Runtime cannot run it."""


@dataclass
class GroupTimes:
    widths: list[int]
    ms: list[float]                # median time of the group's cut at each width
    nodes: int = 0                 # nodes in the cut
    error: str | None = None       # why the group could not be measured (then it stays at full width)

    def at(self, width: int) -> float:
        return self.ms[self.widths.index(width)]


@dataclass
class LatencyTable:
    key: dict
    batch: int
    full_ms: float                                    # the whole model, every group at full width
    overhead_ms: float                                # an empty run
    groups: dict[int, GroupTimes] = field(default_factory=dict)
    pairs: list[list] = field(default_factory=list)   # [g, h, ms of the nodes both cuts share]
    build_s: float = 0.0
    loadavg: list = field(default_factory=list)       # before and after the build
    cached: bool = False                              # loaded from the cache, not measured in this run

    def to_dict(self) -> dict:
        d = asdict(self)
        d["groups"] = {str(k): asdict(v) for k, v in self.groups.items()}
        d.pop("cached")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTable:
        groups = {int(k): GroupTimes(**v) for k, v in d["groups"].items()}
        return cls(d["key"], d["batch"], d["full_ms"], d["overhead_ms"], groups, d["pairs"], d["build_s"],
                   d["loadavg"])

    def fast_widths(self, gid: int) -> list[int]:
        """The widths of the group that no larger width in the table beats: at each, keeping fewer channels
        is faster than keeping any more (the full width is always one)."""
        t = self.groups[gid]
        if t.error is not None:
            return [max(t.widths)] if t.widths else []
        order = np.argsort(t.widths)[::-1]
        fast, best = [], np.inf
        for i in order:
            if t.ms[i] < best:
                fast.append(int(t.widths[i]))
                best = t.ms[i]
        return sorted(fast)


def grid(group: Group, points: int = GRID_POINTS) -> list[int]:
    """Default widths of a group: multiples of the smallest power-of-two multiple of 8 (and of the group's
    block multiple) that gives at most `points` widths, and the full width."""
    c, m = group.channels, group.multiple
    step = int(np.lcm(8, m))
    if step >= c:
        return sorted({w for w in range(max(m, group.fewest), c + 1, m)} | {c})
    while c // step > points:
        step *= 2
    return sorted({w for w in range(step, c + 1, step) if w >= group.fewest} | {c})


def structure_hash(model: onnx.ModelProto) -> str:
    """A hash of what latency depends on: nodes, initializer names, shapes and types, inputs, outputs."""
    h = hashlib.sha256()
    for n in model.graph.node:
        h.update(n.SerializeToString())
    for t in model.graph.initializer:
        h.update(f"{t.name}:{t.data_type}:{list(t.dims)};".encode())
    for vi in list(model.graph.input) + list(model.graph.output):
        h.update(vi.SerializeToString())
    for o in model.opset_import:
        h.update(f"{o.domain}:{o.version};".encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "onnxprune")
    return Path(root) / "latency"


def _identity() -> onnx.ModelProto:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"], name="identity")], "empty", [x], [y])
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


class _Boundary:
    """Values of a cut's inputs in the original network, at the timing batch."""

    def __init__(self, analysis: Analysis, feed: dict[str, np.ndarray]):
        self.analysis, self.feed = analysis, feed

    def values(self, names: list[str]) -> dict[str, np.ndarray]:
        inner = [n for n in names if n not in self.feed]
        got = Tap(self.analysis.model, inner)(self.feed) if inner else {}
        return {n: self.feed[n] if n in self.feed else got[n] for n in names}


def build_table(analysis: Analysis, timer: Timer, batch: int = 1, example: dict | None = None,
                widths: dict[int, list[int]] | None = None, pairs: bool = True, use_cache: bool = True,
                budget_ms: float = 150.0) -> LatencyTable:
    """Measure (or load from the cache) the latency table of `analysis.model` for the prunable groups in
    `widths` (default: every prunable group on its default grid)."""
    if widths is None:
        widths = {g.id: grid(g) for g in analysis.prunable}
    widths = {int(g): sorted({int(w) for w in ws} | {analysis.groups[g].channels}) for g, ws in widths.items()}
    try:
        feed = feeds(analysis.model, batch, example)
    except UserError as exc:
        raise NotMeasurable(str(exc)) from None
    key = {"format": FORMAT, "model": structure_hash(analysis.model), **timer.describe(), "batch": batch,
           "inputs": {k: list(v.shape) for k, v in feed.items()}, "pairs": pairs,
           "widths": hashlib.sha256(json.dumps(sorted(widths.items())).encode()).hexdigest()[:16]}
    path = cache_dir() / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json")
    if use_cache and path.is_file():
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
            if table.key == key:
                table.cached = True
                return table
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable cache entry is measured again and overwritten
    table = _measure(analysis, timer, batch, feed, widths, pairs, key, budget_ms)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(table.to_dict()))
            os.replace(tmp, path)
        except OSError as exc:
            log.info("latency table not cached (%s)", exc)
    return table


def _measure(analysis: Analysis, timer: Timer, batch: int, feed: dict, widths: dict[int, list[int]], pairs: bool,
             key: dict, budget_ms: float) -> LatencyTable:
    t0, load0 = time.perf_counter(), loadavg()
    try:
        base = time_budgeted({"full": timer.runner(analysis.model, feed),
                              "empty": timer.runner(_identity(), {"x": np.zeros(1, np.float32)})},
                             budget_ms=budget_ms)
    except Exception as exc:  # noqa: BLE001 (ONNX Runtime's own errors: an op it lacks, a shape it rejects)
        raise NotMeasurable(f"ONNX Runtime cannot run the model on {timer.runtime.provider} ({_one_line(exc)})") \
            from None
    table = LatencyTable(key, batch, float(np.median(base["full"])), float(np.median(base["empty"])))
    touch = touching(analysis)
    types = elem_types(analysis.model)
    boundary = _Boundary(analysis, feed)
    for gid, ws in widths.items():
        names = set(touch[gid])
        try:
            _, inputs = cut(analysis.model, names, types)
            values = boundary.values(inputs)
            runs = {}
            for w in ws:
                model = analysis.model if w >= analysis.groups[gid].channels else variant(analysis, {gid: w})
                runs[w] = timer.runner(cut(model, names, types)[0], values)
            got = time_budgeted(runs, budget_ms=budget_ms)
            table.groups[gid] = GroupTimes(ws, [float(np.median(got[w])) for w in ws], len(names))
        except Exception as exc:  # noqa: BLE001 (whatever stops a cut from running: the group stays unmeasured)
            table.groups[gid] = GroupTimes(ws, [], len(names), _one_line(exc))
            log.info("latency of group %d not measured: %s", gid, table.groups[gid].error)
    if pairs:
        measured = [g for g in widths if table.groups[g].error is None]
        shared: dict[tuple[int, int], set[str]] = {}
        for i, g in enumerate(measured):
            for h in measured[i + 1:]:
                both = set(touch[g]) & set(touch[h])
                if both:
                    shared[g, h] = both
        pair_runs: dict[tuple[int, int], Runner] = {}
        for (g, h), names in shared.items():
            try:
                sub, inputs = cut(analysis.model, names, types)
                pair_runs[g, h] = timer.runner(sub, boundary.values(inputs))
            except Exception as exc:  # noqa: BLE001 (an unmeasured pair adds no interaction term)
                log.info("latency of the nodes shared by groups %d and %d not measured: %s", g, h, _one_line(exc))
        if pair_runs:
            timed = time_budgeted(pair_runs, budget_ms=budget_ms)
            table.pairs = [[g, h, float(np.median(timed[g, h]))] for (g, h) in pair_runs]
    table.build_s = time.perf_counter() - t0
    table.loadavg = [load0, loadavg()]
    return table
