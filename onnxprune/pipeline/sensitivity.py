"""Output-aware loss curves for the allocation (`allocate=output`, docs/DESIGN.md, "Counts and allocation").

The local imitation loss of a group says little about what its pruning does to the network's output
(a residual stream feeds every later block; a classifier input feeds the logits directly). Here each
group is pruned *alone* on the original network to a few candidate widths, with the run's own method
order and re-fit, and the output discrepancy (KL between the softmax outputs, or MSE) of that masked
reference against the original is measured on the held-out calibration images through the torch twin.
Between the measured widths the curve is interpolated linearly (0 at the full width, non-increasing),
and `selection.allocation.allocate_by_loss` spends the budget where the output loss rises least per
unit of cost saved, exactly as with the local curves.

Cost: the consumers' statistics on the original network (a profiling pass, cut into chunks so that the
tapped activations stay within a bounded memory), one re-fit per group and width, and per batch one
forward of the twin up to each group (`Twin.advance`, shared by all groups) plus one run of the rest of
the network per width (`Twin.resume`).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..analysis import Group
from ..calibration.taps import Tap
from ..options import OptionError, Refit
from ..selection import Selection, greedy
from ..selection.baselines import ensure_segments
from ..statistics import NotSupported, consumers_of
from ..statistics.collector import Collector
from ..statistics.consumer import Consumer
from .problem import LocalProblem
from .refit import apply_refit

if TYPE_CHECKING:
    from .pruner import GreedyPruner

log = logging.getLogger("onnxprune")

WIDTHS = (0.125, 0.25, 0.5, 0.75)   # kept shares at which each group's output loss is measured
TAP_BUDGET = 256 << 20              # bytes of tapped activations per batch in one profiling chunk


def profile_collectors(pruner: GreedyPruner) -> tuple[dict[int, list[Consumer]], dict[int, Collector]]:
    """Every modelled group's consumers and their statistics on the original network: groups are taken in
    visiting order and tapped in chunks whose activations (inputs and outputs of their consumers, one batch)
    stay under TAP_BUDGET, one pass over the calibration data per chunk. Returns ({group: consumers},
    {group: the collector holding its consumers' statistics})."""
    from .pruner import visiting_order
    a = pruner.analysis
    groups: dict[int, list[Consumer]] = {}
    for g in visiting_order(a):
        try:
            groups[g.id] = consumers_of(a, g)
        except NotSupported:
            continue
    shapes = {t.name: t.shape for t in a.graph.tensors().values()}
    batch = pruner.options.calibration.batch_size

    def nbytes(name: str) -> int:
        shape = shapes.get(name)
        if not shape or any(not isinstance(d, int) for d in shape[1:]):
            return 1 << 22
        return 4 * int(np.prod(shape[1:], dtype=np.int64))

    cached = pruner.output_cache() is not None
    chunks: list[list[int]] = []
    size = 0
    for gid, cs in groups.items():
        cost = batch * sum(nbytes(c.input) + (0 if cached else nbytes(c.output)) for c in cs)
        if not chunks or size + cost > TAP_BUDGET:
            chunks.append([])
            size = 0
        chunks[-1].append(gid)
        size += cost
    collectors: dict[int, Collector] = {}
    cache = pruner.output_cache()  # the original's outputs, shared with the sequential pass
    for n, chunk in enumerate(chunks):
        consumers = {c.node: c for gid in chunk for c in groups[gid]}
        col = pruner.collector(list(consumers.values()))
        if cache is not None and all(node in cache for node in consumers):
            col.run(pruner.cal, Tap(a.model, [c.input for c in consumers.values()]), cache,
                    f"profiling {n + 1}/{len(chunks)}")
        else:
            tap = Tap(a.model, [c.input for c in consumers.values()] + [c.output for c in consumers.values()])
            col.run(pruner.cal, tap, tap, f"profiling {n + 1}/{len(chunks)}")
        for gid in chunk:
            collectors[gid] = col
    return groups, collectors


def candidate_widths(group: Group, min_channels: int, round_to: int, widths=WIDTHS) -> list[int]:
    """Kept counts at which the output loss is measured: the shares `widths` of the group, each rounded to
    the group's step and at least its least count, without repeats and below the full width."""
    step = int(np.lcm(max(1, round_to), group.multiple))
    lo = min(group.channels, int(np.ceil(max(min_channels, group.fewest) / group.multiple)) * group.multiple)
    out = []
    for w in widths:
        n = max(lo, int(round(w * group.channels / step)) * step)
        if n < group.channels and n not in out:
            out.append(n)
    return sorted(out)


def _kept(pruner: GreedyPruner, group: Group, order: list[int], n: int) -> np.ndarray:
    """The first n channels of `order`, completed to the block quotas and with every segment kept."""
    from .pruner import complete
    rank = np.empty(group.channels)
    rank[np.asarray(order, dtype=np.int64)] = -np.arange(len(order), dtype=np.float64)
    missing = np.setdiff1d(np.arange(group.channels), order)
    rank[missing] = -len(order) - np.arange(len(missing))
    idx = complete(group, np.array(sorted(order[:n]), dtype=np.int64), n, rank)
    return ensure_segments(pruner.analysis, group, idx, rank)


def interpolate(channels: int, counts: list[int], losses: list[float]) -> np.ndarray:
    """curve[n], n = 0..channels: linear between the measured (count, loss) points and (channels, 0),
    extended below the smallest count with the slope of the first segment, and made non-increasing."""
    xs = np.array(list(counts) + [channels], dtype=np.float64)
    ys = np.array(list(losses) + [0.0], dtype=np.float64)
    order = np.argsort(xs)
    xs, ys = xs[order], np.maximum(ys[order], 0.0)
    n = np.arange(channels + 1, dtype=np.float64)
    curve = np.interp(n, xs, ys)
    if len(xs) > 1 and xs[0] > 0:
        slope = (ys[1] - ys[0]) / max(xs[1] - xs[0], 1e-12)
        low = n < xs[0]
        curve[low] = ys[0] + np.minimum(slope, 0.0) * (n[low] - xs[0])
    return np.maximum.accumulate(curve[::-1])[::-1]


def output_trials(pruner: GreedyPruner, round_to: int = 1, min_channels: int = 1, widths=WIDTHS
                  ) -> dict[int, list[tuple[int, Selection, float]]]:
    """Per modelled group, (kept count, the selection of that group alone with its re-fit, its output loss on
    the held-out calibration samples) at each candidate width (see the module docstring)."""
    a = pruner.analysis
    try:
        state = pruner.global_imitation()
    except OptionError as exc:
        raise OptionError("allocate", "output", exc.reason) from None
    t0 = time.perf_counter()
    loss = state.holdout if state.holdout.samples else state.calib
    t1 = time.perf_counter()
    groups, collectors = profile_collectors(pruner)
    t2 = time.perf_counter()
    alive = np.ones(len(a.class_of), bool)
    ones = np.ones(len(alive))
    trials: dict[int, list[tuple[int, Selection, torch.Tensor, dict]]] = {}
    twin, device = state.original, state.device
    dtype = twin.float_dtype or torch.float32
    for gid, cs in groups.items():
        g = a.groups[gid]
        problem = LocalProblem(pruner, g, g.channels, cs, collectors[gid], alive, ones, constrained=False)
        order, _ = pruner.method.profile_order(problem)
        trials[gid] = []
        for n in candidate_widths(g, min_channels, round_to, widths):
            idx = _kept(pruner, g, list(order), n)
            gam = greedy.ls_gamma(problem.G, problem.c, idx) if pruner.refit == Refit.GAMMA else np.ones(len(idx))
            out = apply_refit(a, Selection(), {}, problem, idx, gam, pruner.refit, pruner.options.refit.ridge)
            sel = Selection({gid: out.kept}, {gid: out.gamma}, dict(out.replace))
            keep, gamma = sel.class_arrays(a)
            gates = torch.as_tensor(np.where(keep, gamma, 0.0), dtype=dtype, device=device)
            weights = {(node, i): torch.as_tensor(np.asarray(v), device=device).to(dtype)
                       for node, values in out.replace.items() for i, v in values.items()}
            trials[gid].append((n, sel, gates, weights))
    del collectors
    t3 = time.perf_counter()
    first = {gid: min(c.node for c in cs) for gid, cs in groups.items()}
    totals = {gid: np.zeros(len(t)) for gid, t in trials.items()}
    with torch.no_grad():
        for batch, ref in zip(loss.batches, loss.reference):
            st = twin.start(batch)
            for gid in sorted(trials, key=lambda g: first[g]):
                st = twin.advance(st, first[gid])
                for j, (_, _, gates, weights) in enumerate(trials[gid]):
                    totals[gid][j] += float(loss._loss(twin.resume(st, gates, weights=weights)[0], ref))
    n_samples = max(loss.samples, 1)
    log.info("output-aware curves: held-out subset %.0fs, profiling %.0fs, re-fits %.0fs, %d trials on %d samples "
             "%.0fs", t1 - t0, t2 - t1, t3 - t2, sum(map(len, trials.values())), loss.samples, time.perf_counter() - t3)
    return {gid: [(n, sel, float(v) / n_samples) for (n, sel, _, _), v in zip(t, totals[gid])]
            for gid, t in trials.items()}


def output_curves(pruner: GreedyPruner, round_to: int = 1, min_channels: int = 1,
                  widths=WIDTHS) -> dict[int, np.ndarray]:
    """Per group, the output loss (on the held-out calibration samples) when that group alone keeps n
    channels, n = 0..channels, interpolated between the measured widths (`output_trials`)."""
    t0 = time.perf_counter()
    trials = output_trials(pruner, round_to, min_channels, widths)
    curves = {gid: interpolate(pruner.analysis.groups[gid].channels, [n for n, _, _ in t], [v for _, _, v in t])
              for gid, t in trials.items()}
    log.info("output-aware curves: %d groups, %d widths, %.0fs", len(curves), sum(len(t) for t in trials.values()),
             time.perf_counter() - t0)
    return curves
