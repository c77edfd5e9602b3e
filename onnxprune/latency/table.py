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
from ..graph.skeleton import too_big
from .runtime import Runner, Timer, feeds, loadavg, time_budgeted
from .subgraph import Cut, cut, elem_types, stand_in, touching, value_infos, variant

log = logging.getLogger("onnxprune")
CACHE_ENV = "ONNXPRUNE_CACHE_DIR"
GRID_POINTS = 16   # at most this many widths per group in the default grid
FORMAT = 5


class NotMeasurable(UserError):
    """The model cannot be timed: no inputs can be made for it, or ONNX Runtime cannot run it."""


@dataclass
class GroupTimes:
    widths: list[int]
    ms: list[float]                # time of the group's cut at each width (fastest interleaved round)
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
    pairs: list[list] = field(default_factory=list)   # [g, h, ms of the nodes both cuts share, alone]
    cross: list[list] = field(default_factory=list)   # [g, h, w_h, w_g, ms of g's cut at w_g with h at w_h]
    # whole-model timings of a few random allocations of the table's widths with the original: [counts, ms]
    # (the first entry is the original, {}), which calibrate the model (`LatencyModel.calibrate`)
    checks: list[list] = field(default_factory=list)
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
        checks = [[{int(g): n for g, n in c.items()}, ms] for c, ms in d["checks"]]
        return cls(d["key"], d["batch"], d["full_ms"], d["overhead_ms"], groups, d["pairs"], d["cross"], checks,
                   d["build_s"], d["loadavg"])

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
    """Values of cuts' inputs in the original network, at the timing batch: fetched together when they fit
    in `limit` bytes, else cut by cut."""

    def __init__(self, analysis: Analysis, feed: dict[str, np.ndarray], limit: float = 512e6):
        self.analysis, self.feed, self.limit = analysis, feed, limit
        self.cache: dict[str, np.ndarray] = {}

    def prefetch(self, names: list[str], infos: dict[str, onnx.ValueInfoProto]) -> None:
        batch = len(next(iter(self.feed.values()))) if self.feed else 1
        inner = [n for n in dict.fromkeys(names) if n not in self.feed]
        size = 0.0
        for n in inner:
            dims = infos[n].type.tensor_type.shape.dim if n in infos else None
            if not dims or any(not d.HasField("dim_value") for d in dims[1:]):
                return  # a shape not known: cut by cut
            size += 4.0 * batch * float(np.prod([d.dim_value for d in dims[1:]]))
        if inner and size <= self.limit:
            self.cache.update(Tap(self.analysis.model, inner)(self.feed))

    def values(self, names: list[str]) -> dict[str, np.ndarray]:
        inner = [n for n in names if n not in self.feed and n not in self.cache]
        got = Tap(self.analysis.model, inner)(self.feed) if inner else {}
        return {n: self.feed[n] if n in self.feed else self.cache[n] if n in self.cache else got[n] for n in names}


def _fastest(runs: dict, budget_ms: float, ordered: list | None = None) -> list[float]:
    """The fastest of each runner's interleaved rounds (on a shared machine, noise only adds time), and the
    runners among `ordered` (default: all, in the order given, i.e. by width) that stand out (over twice
    the time of both neighbours) timed again, keeping the faster."""
    got = time_budgeted(runs, budget_ms=budget_ms)
    best = {k: float(np.min(v)) for k, v in got.items()}
    keys = list(runs) if ordered is None else ordered
    for _ in range(2):
        vals = [best[k] for k in keys]
        odd = [k for i, k in enumerate(keys)
               if len(keys) > 2 and vals[i] > 2 * max(vals[max(i - 1, 0)] if i > 0 else 0.0,
                                                      vals[i + 1] if i + 1 < len(keys) else 0.0)
               and vals[i] > 2 * float(np.median(vals))]
        if not odd:
            break
        again = time_budgeted({k: runs[k] for k in odd}, budget_ms=budget_ms)
        for k in odd:
            best[k] = min(best[k], float(np.min(again[k])))
    return [best[k] for k in runs]


def _check(analysis: Analysis, timer: Timer, feed: dict, table: LatencyTable, n: int, budget_ms: float) -> None:
    """Time the original and `n` random allocations of the measured widths (seeded), interleaved."""
    rng = np.random.default_rng(0)
    measured = {g: t for g, t in table.groups.items() if t.error is None}
    if not measured:
        return
    allocs: list[dict[int, int]] = [{}]
    for _ in range(n):
        level = rng.uniform(0.3, 1.0)
        alloc = {}
        for g, t in measured.items():
            want = level * analysis.groups[g].channels * rng.uniform(0.8, 1.2)
            alloc[g] = int(t.widths[int(np.argmin(np.abs(np.asarray(t.widths) - want)))])
        allocs.append(alloc)
    try:
        runs = {i: timer.runner(analysis.model if not c else variant(analysis, c), feed) for i, c in enumerate(allocs)}
        got = _fastest(runs, budget_ms, ordered=[])
    except Exception as exc:  # noqa: BLE001 (then the model is not calibrated)
        log.info("latency model not calibrated: %s", _one_line(exc))
        return
    table.checks = [[c, ms] for c, ms in zip(allocs, got)]


def _shrunk(analysis: Analysis, values: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """Boundary values as they are when channels are removed (`keep`, per class): each tensor sliced along
    its one channel axis. A tensor with channels on more than one axis raises ValueError."""
    out = {}
    for name, v in values.items():
        layout = analysis.layouts.get(name)
        if layout is None:
            out[name] = v
            continue
        lay = np.asarray(layout)
        axes = [i for i, n in enumerate(lay.shape) if n > 1]
        mask = keep[analysis.class_of[lay.ravel()]]
        if mask.all():
            out[name] = v
        elif len(axes) == 1 and v.shape[axes[0]] == len(mask):
            out[name] = np.ascontiguousarray(np.compress(mask, v, axis=axes[0]))
        else:
            raise ValueError(f"'{name}' has channels on several axes")
    return out


def _part(ws: list[int], channels: int, share: float = 0.3) -> int | None:
    """The measured width nearest to `share` of the group's (not the full width): far enough from it that
    the interaction's difference stands out from the noise, about where heavy pruning takes a group."""
    below = [w for w in ws if w < channels]
    return min(below, key=lambda w: abs(w - share * channels)) if below else None


def build_table(analysis: Analysis, timer: Timer, batch: int = 1, example: dict | None = None,
                widths: dict[int, list[int]] | None = None, pairs: bool = True, use_cache: bool = True,
                budget_ms: float = 150.0, checks: int = 6) -> LatencyTable:
    """Measure (or load from the cache) the latency table of `analysis.model` for the prunable groups in
    `widths` (default: every prunable group on its default grid); with `pairs`, the interactions and
    `checks` whole-model timings of random allocations too."""
    if too_big(analysis.model):  # every timed cut and stand-in would copy the weights through a temporary file
        raise NotMeasurable("the model is over protobuf's 2 GB limit: its latency is not measured")
    if not pairs:
        checks = 0
    if widths is None:
        widths = {g.id: grid(g) for g in analysis.prunable}
    widths = {int(g): sorted({int(w) for w in ws} | {analysis.groups[g].channels}) for g, ws in widths.items()}
    try:
        feed = feeds(analysis.model, batch, example)
    except UserError as exc:
        raise NotMeasurable(str(exc)) from None
    key = {"format": FORMAT, "model": structure_hash(analysis.model), **timer.describe(), "batch": batch,
           "inputs": {k: list(v.shape) for k, v in feed.items()}, "pairs": pairs, "checks": checks,
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
    table = _measure(analysis, timer, batch, feed, widths, pairs, key, budget_ms, checks)
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
             key: dict, budget_ms: float, checks: int) -> LatencyTable:
    t0, load0 = time.perf_counter(), loadavg()
    try:
        base = time_budgeted({"full": timer.runner(analysis.model, feed),
                              "empty": timer.runner(_identity(), {"x": np.zeros(1, np.float32)})},
                             budget_ms=budget_ms)
    except Exception as exc:  # noqa: BLE001 (ONNX Runtime's own errors: an op it lacks, a shape it rejects)
        raise NotMeasurable(f"ONNX Runtime cannot run the model on {timer.runtime.provider} ({_one_line(exc)})") \
            from None
    table = LatencyTable(key, batch, float(np.min(base["full"])), float(np.min(base["empty"])))
    touch = touching(analysis)
    types = elem_types(analysis.model)
    infos = value_infos(analysis.model)
    boundary = _Boundary(analysis, feed)
    cuts: dict[int, Cut] = {}
    for gid in widths:
        try:
            cuts[gid] = Cut(analysis, gid, set(touch[gid]), types, infos)
        except Exception as exc:  # noqa: BLE001 (whatever stops a cut: the group stays unmeasured)
            table.groups[gid] = GroupTimes(widths[gid], [], len(touch[gid]), _one_line(exc))
    shared: dict[tuple[int, int], tuple[onnx.ModelProto, list[str]]] = {}
    if pairs:
        measurable = sorted(cuts)
        for i, g in enumerate(measurable):
            for h in measurable[i + 1:]:
                both = set(touch[g]) & set(touch[h])
                if both:
                    shared[g, h] = cut(analysis.model, both, types, infos)
    boundary.prefetch([n for c in cuts.values() for n in c.inputs] + [n for _, ins in shared.values() for n in ins],
                      infos)
    # each interaction is timed in one cut: the one with fewer nodes
    neighbours: dict[int, list[int]] = {g: [] for g in cuts}
    for g, h in shared:
        first, other = (g, h) if len(cuts[g].names) <= len(cuts[h].names) else (h, g)
        neighbours[first].append(other)
    for gid, c in cuts.items():
        ws = widths[gid]
        try:
            values = boundary.values(c.inputs)
            runs: dict = {w: timer.runner(c.at(w), values) for w in ws}
        except Exception as exc:  # noqa: BLE001 (whatever stops a cut from running: the group stays unmeasured)
            table.groups[gid] = GroupTimes(ws, [], len(c.names), _one_line(exc))
            continue
        mine = _part(ws, analysis.groups[gid].channels)
        for h in neighbours[gid]:  # the interaction, in context: g's cut with g and a neighbour shrunk
            w = _part(widths[h], analysis.groups[h].channels)
            if w is None or mine is None:
                continue
            try:  # the four corners, all cut from the whole rewritten network (the same way)
                shrunk = _shrunk(analysis, values, stand_in(analysis, {h: w}))
                for wh in (analysis.groups[h].channels, w):
                    for wg in (analysis.groups[gid].channels, mine):
                        corner = {h: wh, gid: wg}
                        runs["x", h, wh, wg] = timer.runner(cut(variant(analysis, corner), c.names, types)[0],
                                                            shrunk if wh < analysis.groups[h].channels else values)
            except Exception as exc:  # noqa: BLE001 (then the shared nodes timed alone stand in)
                for stale in [k for k in runs if isinstance(k, tuple) and k[1] == h]:
                    del runs[stale]
                log.info("interaction of groups %d and %d not measured in context: %s", gid, h, _one_line(exc))
        try:
            got = dict(zip(runs, _fastest(runs, budget_ms, ordered=ws)))
        except Exception as exc:  # noqa: BLE001 (whatever stops a cut from running: the group stays unmeasured)
            table.groups[gid] = GroupTimes(ws, [], len(c.names), _one_line(exc))
            continue
        table.groups[gid] = GroupTimes(ws, [got[w] for w in ws], len(c.names))
        table.cross += [[gid, k[1], k[2], k[3], ms] for k, ms in got.items() if isinstance(k, tuple)]
    for gid, t in sorted(table.groups.items()):
        if t.error is not None:
            log.info("latency of group %d not measured: %s", gid, t.error)
    if pairs:
        pair_runs: dict[tuple[int, int], Runner] = {}
        for (g, h), (sub, inputs) in shared.items():
            if table.groups[g].error is not None or table.groups[h].error is not None:
                continue
            try:
                pair_runs[g, h] = timer.runner(sub, boundary.values(inputs))
            except Exception as exc:  # noqa: BLE001 (an unmeasured pair adds no interaction term)
                log.info("latency of the nodes shared by groups %d and %d not measured: %s", g, h, _one_line(exc))
        if pair_runs:
            fastest = _fastest(pair_runs, budget_ms)
            table.pairs = [[g, h, ms] for (g, h), ms in zip(pair_runs, fastest)]
    if checks:
        _check(analysis, timer, feed, table, checks, budget_ms)
    table.build_s = time.perf_counter() - t0
    table.loadavg = [load0, loadavg()]
    return table
