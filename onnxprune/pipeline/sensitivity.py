"""Output-aware loss curves for the allocation (`allocate=output`, docs/DESIGN.md, "Counts and allocation").

The local imitation loss of a group says little about what its pruning does to the network's output
(a residual stream feeds every later block; a classifier input feeds the logits directly). Here each
group is pruned *alone* on the original network to a few candidate widths, with the run's own method
order and re-fit, and the output discrepancy (KL between the softmax outputs, or MSE) of that masked
reference against the original is measured on the held-out calibration images through the torch twin.
Between the measured widths the curve is interpolated linearly (0 at the full width, non-increasing);
below the smallest measured width it rises steeply (`interpolate`: nothing was measured there), and
`selection.allocation.allocate_by_loss` spends the budget where the output loss rises least per unit of
cost saved, exactly as with the local curves. The curves treat the groups' losses as additive, which
they are not; so the allocation found, the uniform one and one halfway between (`blend`) are each
tried as a stand-in of the whole network (every group pruned at once with its decision on the original
network, `Sensitivity.joint_loss`) and the lowest held-out output loss is kept (`pipeline/budget.py`).

Cost: the consumers' statistics on the original network (a profiling pass, cut into chunks so that the
tapped activations stay within a bounded memory), one re-fit per group and width (a full re-fit chooses
each consumer's ridge strength at the group's first width only, `Sensitivity.decision`), and per batch one
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
from .global_state import TwinUnavailable
from .problem import LocalProblem
from .refit import apply_refit

if TYPE_CHECKING:
    from .pruner import GreedyPruner

log = logging.getLogger("onnxprune")

WIDTHS = (0.125, 0.25, 0.5, 0.75)   # kept shares at which each group's output loss is measured
TAP_BUDGET = 256 << 20              # bytes of tapped activations per batch in one profiling chunk
UNMEASURED = 1e6                    # loss per channel removed below a group's smallest measured width


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
    batch = pruner.cal.run_batch(pruner.options.calibration.batch_size)

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
        if cache is not None and all((node, "output") in cache for node in consumers):
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
    """curve[n], n = 0..channels: linear between the measured (count, loss) points and (channels, 0), and made
    non-increasing. Below the smallest measured count nothing is known: a line through the first measured
    points said a group that barely matters at an eighth of its width costs nothing at one channel, and the
    allocation took it there (Fashion-MNIST MobileNet at 30% MACs: its last 256-channel group kept 1, top-1
    92.3% -> 21.9%). There each channel removed costs UNMEASURED times the largest measured loss (plus one),
    so the allocation goes below a group's smallest measured width only once every group is at its own."""
    xs = np.array(list(counts) + [channels], dtype=np.float64)
    ys = np.array(list(losses) + [0.0], dtype=np.float64)
    order = np.argsort(xs)
    xs, ys = xs[order], np.maximum(ys[order], 0.0)
    n = np.arange(channels + 1, dtype=np.float64)
    curve = np.interp(n, xs, ys)
    low = n < xs[0]
    curve[low] = ys[0] + UNMEASURED * (1.0 + ys.max()) * (xs[0] - n[low])
    return np.maximum.accumulate(curve[::-1])[::-1]


def _unavailable(cause: str) -> OptionError:
    return OptionError("allocate", "output", f"{cause} (the output-aware allocation runs the torch twin; "
                       "--allocate uniform or loss need none)")


class Sensitivity:
    """The groups' consumers and statistics on the original network, their channel orders and re-fits, and the
    output loss on the held-out calibration samples of any such decisions (see the module docstring)."""

    def __init__(self, pruner: GreedyPruner):
        a = self.analysis = pruner.analysis
        self.pruner = pruner
        t0 = time.perf_counter()
        try:
            state = pruner.global_imitation()
            # the reference outputs run the twin: an op setting it does not know fails here, not later
            self.loss = state.holdout if state.holdout.samples else state.calib
        except TwinUnavailable as exc:
            raise _unavailable(exc.cause) from None
        self.twin, self.device = state.original, state.device
        self.dtype = self.twin.float_dtype or torch.float32
        t1 = time.perf_counter()
        self.groups, collectors = profile_collectors(pruner)
        self.seconds = {"held_out_subset": t1 - t0, "profiling": time.perf_counter() - t1}
        alive = np.ones(len(a.class_of), bool)
        ones = np.ones(len(alive))
        self.problems = {gid: LocalProblem(pruner, a.groups[gid], a.groups[gid].channels, cs, collectors[gid], alive,
                                           ones, constrained=False) for gid, cs in self.groups.items()}
        self.orders = {gid: list(pruner.method.profile_order(p)[0]) for gid, p in self.problems.items()}
        self.first = {gid: min(c.node for c in cs) for gid, cs in self.groups.items()}
        # re-based Q·K dims groups (docs/DESIGN.md, "Dims within heads"): ordered by their scores, no re-fit; the
        # twin gates them at the product that sums over them
        prunable = {g.id for g in a.prunable}
        self.scored = {gid: sc for gid, sc in pruner.head_scores.items() if gid in prunable}
        for gid, sc in self.scored.items():
            self.orders[gid] = [int(i) for i in np.argsort(-sc, kind="stable")]
            classes = set(a.groups[gid].classes.tolist())
            self.first[gid] = min(node for node, left, _ in a.contractions if int(a.class_of[left[0]]) in classes)
        self._decided: dict[tuple[int, int], Selection] = {}
        # group -> consumer name -> the ridge strength the group's first re-fit chose for that consumer
        self.ridges: dict[int, dict[str, float]] = {}

    def decision(self, gid: int, n: int) -> Selection:
        """Group `gid` alone keeping the first n channels of its order, with the run's re-fit (kept until `forget`:
        the stand-ins reuse the trials' decisions at the measured widths instead of re-fitting them again). The
        full re-fit chooses each consumer's ridge strength on the held-out split once, at the group's first
        decision (`trials` takes the width nearest half first), and re-fits the other widths with it: one
        solve per width instead of one per strength of the grid."""
        key = (gid, n)
        if key not in self._decided and gid in self.scored:
            idx = _kept(self.pruner, self.analysis.groups[gid], self.orders[gid], n)
            self._decided[key] = Selection({gid: idx}, {gid: np.ones(len(idx))}, {})
        if key not in self._decided:
            pruner, problem, g = self.pruner, self.problems[gid], self.analysis.groups[gid]
            idx = _kept(pruner, g, self.orders[gid], n)
            gam = greedy.ls_gamma(problem.G, problem.c, idx) if pruner.refit == Refit.GAMMA else np.ones(len(idx))
            out = apply_refit(self.analysis, Selection(), {}, problem, idx, gam, pruner.refit,
                              pruner.options.refit.ridge, chosen=self.ridges.get(gid))
            self.ridges.setdefault(gid, dict(out.ridge))
            self._decided[key] = Selection({gid: out.kept}, {gid: out.gamma}, dict(out.replace))
        return self._decided[key]

    @property
    def gids(self) -> list[int]:
        """The groups with curves: those with statistics, then the re-based Q·K dims groups."""
        return list(self.groups) + [g for g in self.scored if g not in self.groups]

    def forget(self) -> None:
        """Drop the decisions kept so far (their re-fitted weights)."""
        self._decided.clear()

    def _gated(self, sel: Selection) -> tuple[torch.Tensor, dict]:
        keep, gamma = sel.class_arrays(self.analysis)
        gates = torch.as_tensor(np.where(keep, gamma, 0.0), dtype=self.dtype, device=self.device)
        weights = {(node, i): torch.as_tensor(np.asarray(v), device=self.device).to(self.dtype)
                   for node, values in sel.replace.items() for i, v in values.items()}
        return gates, weights

    def trials(self, round_to: int = 1, min_channels: int = 1, widths=WIDTHS
               ) -> dict[int, list[tuple[int, Selection, float]]]:
        """Per group, (kept count, its decision, the output loss with every other group at its full width) at
        each candidate width."""
        t0 = time.perf_counter()
        a = self.analysis
        plan: dict[int, list[tuple[int, Selection]]] = {}
        for gid in self.gids:
            counts = candidate_widths(a.groups[gid], min_channels, round_to, widths)
            if counts:  # the group's first decision chooses its consumers' ridge strengths: the width nearest half
                self.decision(gid, min(counts, key=lambda n: abs(n - a.groups[gid].channels / 2)))
            plan[gid] = [(n, self.decision(gid, n)) for n in counts]
        gated = {gid: [self._gated(sel) for _, sel in t] for gid, t in plan.items()}
        t1 = time.perf_counter()
        totals = {gid: np.zeros(len(t)) for gid, t in plan.items()}
        twin, loss = self.twin, self.loss
        with torch.no_grad():
            for batch, ref in zip(loss.batches, loss.reference):
                st = twin.start(batch)
                for gid in sorted(plan, key=lambda g: self.first[g]):
                    st = twin.advance(st, self.first[gid])
                    for j, (gates, weights) in enumerate(gated[gid]):
                        totals[gid][j] += float(loss._loss(twin.resume(st, gates, weights=weights)[0], ref))
        n_samples = max(loss.samples, 1)
        self.seconds.update(refits=t1 - t0, trials=time.perf_counter() - t1)
        log.info("output-aware curves: %s; %d trials on %d samples",
                 ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()), sum(map(len, plan.values())),
                 loss.samples)
        return {gid: [(n, sel, float(v) / n_samples) for (n, sel), v in zip(t, totals[gid])]
                for gid, t in plan.items()}

    def curves(self, round_to: int = 1, min_channels: int = 1, widths=WIDTHS) -> dict[int, np.ndarray]:
        """Per group, the output loss when it alone keeps n channels, n = 0..channels (`interpolate`)."""
        return {gid: interpolate(self.analysis.groups[gid].channels, [n for n, _, _ in t], [v for _, _, v in t])
                for gid, t in self.trials(round_to, min_channels, widths).items()}

    def stand_in(self, counts: dict[int, int]) -> Selection:
        """Every group pruned at once to `counts`, each with its own decision on the original network."""
        sel = Selection()
        for gid in self.gids:
            n = counts.get(gid, self.analysis.groups[gid].channels)
            if n < self.analysis.groups[gid].channels:
                one = self.decision(gid, n)
                sel.kept.update(one.kept)
                sel.gamma.update(one.gamma)
                sel.replace.update(one.replace)
        return sel

    def joint_loss(self, counts: dict[int, int]) -> float:
        """The output loss on the held-out calibration samples of every group pruned at once to `counts`, each
        with its own decision (a stand-in for the sequential pass that sees how the groups' errors add up; a
        consumer shared by two groups keeps the re-fit of the later one)."""
        gates, weights = self._gated(self.stand_in(counts))
        with torch.no_grad():
            total = sum(float(self.loss._loss(self.twin(b, gates, weights=weights)[0], r))
                        for b, r in zip(self.loss.batches, self.loss.reference))
        return total / max(self.loss.samples, 1)


def blend(model, first: dict[int, int], second: dict[int, int], share: float, target: float, round_to: int,
          min_channels: int, fixed: set[int], widths: dict[int, np.ndarray] | None = None) -> dict[int, int]:
    """Counts between two allocations (geometric, `share` of the way from `first` to `second`; rounded to the
    group's step, or to the nearest of its allowed `widths`), moved to the target cost group step by group
    step."""
    from ..selection.allocation import refine
    a = model.analysis
    out = {}
    for gid in model.gids:
        g = a.groups[gid]
        u, o = first.get(gid, g.channels), second.get(gid, g.channels)
        step = int(np.lcm(max(1, round_to), g.multiple))
        n = float(np.exp((1 - share) * np.log(max(u, 1)) + share * np.log(max(o, 1))))
        if gid in fixed:
            out[gid] = u
        elif widths is not None and gid in widths:
            allowed = np.asarray(widths[gid])
            out[gid] = int(allowed[int(np.argmin(np.abs(allowed - n)))])
        else:
            out[gid] = int(min(g.channels, max(step, round(n / step) * step)))
    return refine(model, out, target, round_to, min_channels, fixed, widths)


def output_trials(pruner: GreedyPruner, round_to: int = 1, min_channels: int = 1, widths=WIDTHS
                  ) -> dict[int, list[tuple[int, Selection, float]]]:
    """Per modelled group, (kept count, the selection of that group alone with its re-fit, its output loss on
    the held-out calibration samples) at each candidate width (see the module docstring)."""
    return Sensitivity(pruner).trials(round_to, min_channels, widths)


def output_curves(pruner: GreedyPruner, round_to: int = 1, min_channels: int = 1,
                  widths=WIDTHS) -> dict[int, np.ndarray]:
    """Per group, the output loss (on the held-out calibration samples) when that group alone keeps n
    channels, n = 0..channels, interpolated between the measured widths (`output_trials`)."""
    return Sensitivity(pruner).curves(round_to, min_channels, widths)
