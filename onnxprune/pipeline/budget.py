"""How many channels each group keeps in a run (docs/DESIGN.md, "Counts and allocation" and "Latency").

A keep ratio gives counts directly. A MACs/params fraction is shared either by one uniform ratio, or by
loss (`allocate=loss`): one profiling pass over the calibration data on the original network gives
every group's relative imitation loss at every kept count, along the method's own channel order and
with the chosen re-fit, and channels go where the loss rises least per unit of cost saved; or by output
loss (`allocate=output`, `sensitivity.py`): the same, with the network's output loss when each group
alone is pruned to a few widths; that allocation, the uniform one and one halfway between are then
tried as stand-ins (every group pruned at once, each with its decision on the original network) and the
lowest held-out output loss is kept. MACs targets
are then measured on a stand-in selection and moved within 2%.

A latency fraction is shared the same ways with the latency stage's `LatencyModel` as the cost and the
table's fast widths as the allowed counts; a stand-in with the chosen counts is then measured against
the original and, when it misses the target, the allocation is corrected and measured again. With
`round_to=auto` (the default) each group's rounding is the one a probe measures fastest near its kept
count, and the stand-in must measure faster than the original.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..analysis import Analysis
from ..analysis.cost_model import CountCost, macs_model, params_model
from ..calibration.taps import Tap
from ..errors import UserError
from ..latency import LatencyModel, Runtime, build_table, default_timer
from ..latency.speed import speedup
from ..latency.subgraph import variant
from ..latency.table import NotMeasurable
from ..latency.widths import choose, constrained, multiples, probe_widths
from ..options import AUTO, Allocation, OptionError, Refit, TargetOptions
from ..selection import counts_for_ratio, counts_for_target, fit_to_target, greedy, select
from ..selection.allocation import allocate_by_loss, check_reachable
from ..statistics import NotSupported, consumers_of
from ..statistics.moments import refit_curve
from .problem import LocalProblem
from .sensitivity import Sensitivity, blend
from .terms import member

if TYPE_CHECKING:
    from .pruner import GreedyPruner

log = logging.getLogger("onnxprune")
LATENCY_TOLERANCE = 0.05   # a latency target is met when measured within 5% of it
LATENCY_ROUNDS = 6         # allocations measured at most for a latency target


@dataclass
class Measure:
    """Where a run measures latency: the timer (ONNX Runtime on the target's provider), batch and inputs."""
    runtime: Runtime
    batch: int
    example: dict | None = None

    @classmethod
    def of(cls, target: TargetOptions, example: dict | None) -> Measure:
        runtime = Runtime(target.provider, target.latency_threads, target.latency_fp16)
        runtime.check(fp16_option="latency_fp16")
        return cls(runtime, target.latency_batch, example)

    @property
    def timer(self):
        return default_timer(self.runtime)

    def describe(self) -> dict:
        d = self.timer.describe()
        return {"timer": d.pop("timer"), "batch": self.batch, **{k: d[k] for k in ("provider", "threads", "fp16")}}


@dataclass
class Plan:
    """The counts of a run, the counts each group was allowed (None: steps of a fixed round_to), and what
    was measured on the way (the report's `latency` record)."""
    counts: dict[int, int]
    widths: dict[int, np.ndarray] | None = None
    latency: dict = field(default_factory=dict)
    measure: Measure | None = None

    def finish(self, analysis: Analysis, pruned) -> dict:
        """Measure the pruned model against the original (when this run measures latency). With
        round_to=auto, a pruned model that is not faster is refused."""
        if self.measure is None:
            return self.latency
        m = self.measure
        got = speedup(m.timer, analysis.model, pruned, m.batch, m.example)
        self.latency["measured"] = got
        if self.latency.get("kind") == "round_to" and got["speedup"] < 1.0:
            raise UserError(f"the pruned model measured slower than the original on {m.runtime.provider} at batch "
                            f"{m.batch} ({_timings(got)}); it is not "
                            "written. Choose a fixed rounding (round_to) or a smaller target")
        if self.latency.get("kind") == "latency":
            ratio = 1.0 / got["speedup"]
            self.latency["measured_ratio"] = ratio
            if ratio > self.latency["target"] * (1 + LATENCY_TOLERANCE):
                log.warning("the pruned model measured %.3f of the original's latency (target %.3f)",
                            ratio, self.latency["target"])
        return self.latency


def first_rows(pruner: GreedyPruner | None) -> dict | None:
    """The first calibration batch: the input shapes latency is measured with."""
    if pruner is None:
        return None
    return next(iter(pruner.cal.batches(pruner.options.calibration.batch_size)))[1]


def counts(pruner: GreedyPruner, target: TargetOptions, overrides: dict[int, int]) -> dict[int, int]:
    return plan(pruner.analysis, target, overrides, pruner).counts


def plan(analysis: Analysis, target: TargetOptions, overrides: dict[int, int],
         pruner: GreedyPruner | None = None) -> Plan:
    """The counts for a target; `pruner` (a calibrated run) gives loss curves and input shapes."""
    kind, fraction = target.check_one_target()
    if kind == "latency":
        return _latency_plan(analysis, pruner, fraction, target, overrides, Measure.of(target, first_rows(pruner)))
    if target.round_to != AUTO:
        out = Plan(_counts(analysis, pruner, kind, fraction, target, overrides, int(target.round_to), None))
        if kind == "flops" and pruner is not None:
            out.counts = _fit_macs(analysis, pruner, out.counts, fraction, target, overrides, int(target.round_to),
                                   None)
        return out
    measure = Measure.of(target, first_rows(pruner))
    first = _counts(analysis, pruner, kind, fraction, target, overrides, 1, None)
    free = {g: n for g, n in first.items() if g not in overrides}
    try:
        probe = build_table(analysis, measure.timer, measure.batch, measure.example,
                            widths=probe_widths(analysis, free), pairs=False)
    except NotMeasurable as exc:  # said in the log and the report: the counts are not rounded
        log.warning("round-to auto: latency not measured, counts not rounded: %s", exc)
        out = Plan(first, None, {"kind": "round_to", **measure.describe(), "model_not_measured": str(exc)})
        if kind == "flops" and pruner is not None:
            out.counts = _fit_macs(analysis, pruner, out.counts, fraction, target, overrides, 1, None)
        return out
    times = {g: dict(zip(t.widths, t.ms)) for g, t in probe.groups.items() if t.error is None}
    widths, record = choose(analysis, free, times, target.min_channels)
    for g, n in overrides.items():
        widths[g] = np.array([n], dtype=np.int64)
    not_measured = {g: t.error for g, t in probe.groups.items() if t.error is not None}
    relaxed = _relax(analysis, kind, fraction, target, widths, record)
    found = _counts(analysis, pruner, kind, fraction, target, overrides, 1, widths)
    if kind == "flops" and pruner is not None:
        found = _fit_macs(analysis, pruner, found, fraction, target, overrides, 1, widths)
    latency = {"kind": "round_to", **measure.describe(),
               "groups": {str(g): r for g, r in sorted(record.items())},
               "not_measured": {str(g): e for g, e in not_measured.items()},
               "probe_timings": sum(len(t.widths) for t in probe.groups.values()), "relaxed": relaxed}
    log.info("round-to auto: %d groups probed at %d widths on %s (batch %d)%s; %d keep their full width "
             "(no faster width)", len(times), latency["probe_timings"], measure.runtime.provider, measure.batch,
             " (cached)" if probe.cached else f" in {probe.build_s:.1f}s",
             sum(1 for r in record.values() if not r["pays"]))
    if pruner is not None:  # fail before the sequential pass: a stand-in has the same widths
        check = speedup(measure.timer, analysis.model, variant(analysis, found), measure.batch, measure.example)
        latency["stand_in"] = check
        if check["speedup"] < 1.0:
            raise UserError(f"with the fastest measured widths the pruned model is still slower than the original "
                            f"on {measure.runtime.provider} at batch {measure.batch} ({_timings(check)}); choose a "
                            "fixed rounding (round_to) or a smaller target")
    return Plan(found, widths, latency, measure)


def _timings(got: dict) -> str:
    """A `speedup` measurement in words: the verdict is the median of the paired per-round ratios, which can
    fall below 1 while the pruned model's median time is the lower one."""
    return (f"paired speed-up {got['speedup']:.3f}x over {got['rounds']} interleaved rounds; median "
            f"{got['pruned_ms']:.3g} ms against {got['original_ms']:.3g} ms")


def _relax(analysis: Analysis, kind: str, fraction: float, target: TargetOptions, widths: dict[int, np.ndarray],
           record: dict[int, dict]) -> list[str]:
    """When the fast roundings cannot reach a MACs/params target (small groups rounded to 4 or 8 cannot go
    lower), halve the roundings, then let the groups that did not pay be pruned too, until it can. Returns
    what was relaxed (for the report)."""
    if kind == "keep_ratio":
        return []
    model = macs_model(analysis) if kind == "flops" else params_model(analysis)

    def reachable() -> bool:
        floor = counts_for_ratio(analysis, 0.0, 1, target.min_channels, None, widths)
        return bool(model(model.vector(floor)) <= fraction * (1 + 0.02) * model.total)

    done: list[str] = []
    while not reachable():
        halve = [g for g, r in record.items() if r["pays"] and (r["rounding"] or 1) > 1]
        if halve:
            for g in halve:
                record[g]["rounding"] //= 2
                widths[g] = multiples(analysis.groups[g], record[g]["rounding"], target.min_channels)
            done.append("roundings halved for groups " + ", ".join(map(str, halve)))
            continue
        unpaid = [g for g, r in record.items() if not r["pays"] and len(widths[g]) == 1]
        if not unpaid:
            break  # the counts below report the target as unreachable
        for g in unpaid:
            record[g]["rounding"] = 1
            widths[g] = multiples(analysis.groups[g], 1, target.min_channels)
        done.append("groups that did not pay pruned anyway: " + ", ".join(map(str, unpaid)))
    for line in done:
        log.info("round-to auto: %s (the target is out of reach otherwise)", line)
    return done


def _counts(analysis: Analysis, pruner: GreedyPruner | None, kind: str, fraction: float, target: TargetOptions,
            overrides: dict[int, int], round_to: int, widths: dict[int, np.ndarray] | None) -> dict[int, int]:
    if kind == "keep_ratio":
        return counts_for_ratio(analysis, fraction, round_to, target.min_channels, overrides, widths)
    return _allocate(analysis, pruner, kind, fraction, target, overrides, round_to, widths)


def _fit_macs(analysis: Analysis, pruner: GreedyPruner, found: dict[int, int], fraction: float,
              target: TargetOptions, overrides: dict[int, int], round_to: int,
              widths: dict[int, np.ndarray] | None) -> dict[int, int]:
    # the cost model spreads a group's count evenly; measure it on a stand-in selection (the same
    # per-piece quotas as the real one) and move single steps of free groups until within 2%
    sel = select(analysis, found, "magnitude", pruner.options.selection.norm)
    fit_to_target(analysis, sel, {g: v for g, v in sel.scores.items() if g not in overrides}, fraction,
                  target.min_channels, round_to=round_to, widths=widths)
    return {g: len(v) for g, v in sel.kept.items()}


def _allocate(analysis: Analysis, pruner: GreedyPruner | None, kind: str, fraction: float, target: TargetOptions,
              overrides: dict[int, int], round_to: int, widths: dict[int, np.ndarray] | None = None,
              model=None) -> dict[int, int]:
    a = analysis
    min_channels = target.min_channels
    allocate = used_allocation(target.allocate, pruner)
    if allocate == Allocation.UNIFORM or pruner is None:
        return counts_for_target(a, fraction, kind, round_to, min_channels, overrides, widths=widths, model=model)
    if model is None:
        model = macs_model(a) if kind == "flops" else params_model(a)
    if not 0 < fraction <= 1:
        raise OptionError(kind, fraction, "must be in (0, 1]")
    check_reachable(model, counts_for_ratio(a, 0.0, round_to, min_channels, overrides, widths), fraction, kind,
                    0.02)
    if allocate == Allocation.LOSS:
        return _by_curves(a, _curves(pruner), model, fraction, round_to, min_channels, overrides, widths)[0]
    try:
        return _by_output(a, pruner, kind, fraction, round_to, min_channels, overrides, widths, model)
    except UserError as exc:  # a user error other than the output allocation's own refusal stays one
        if target.allocate != Allocation.AUTO or not (isinstance(exc, OptionError) and exc.option == "allocate"):
            raise
        reason = exc.reason
    except Exception as exc:  # auto is the default, not a request: any failure of the twin falls back, said
        if target.allocate != Allocation.AUTO:
            raise
        reason = f"{type(exc).__name__}: {exc}"
    pruner.allocated = Allocation.UNIFORM   # said in the log, the report's allocation and the run summary
    log.warning("allocate auto: uniform, since allocate=output is not available here (%s)", reason)
    pruner.allocation = {"chosen": "uniform", "output_unavailable": reason}
    return counts_for_target(a, fraction, kind, round_to, min_channels, overrides, widths=widths, model=model)


def _by_curves(a: Analysis, curves: dict[int, np.ndarray], model, fraction: float, round_to: int, min_channels: int,
               overrides: dict[int, int], widths: dict[int, np.ndarray] | None
               ) -> tuple[dict[int, int], dict[int, int]]:
    """Counts by marginal loss per unit of cost on `curves` (`selection/allocation.py`), and the counts fixed."""
    fixed = dict(overrides)
    for g in a.prunable:  # groups without statistics keep the uniform share
        if g.id not in curves and g.id not in fixed:
            fixed[g.id] = counts_for_ratio(a, fraction, round_to, min_channels, widths=widths)[g.id]
    return allocate_by_loss(model, curves, fraction, round_to, min_channels, fixed, widths=widths), fixed


def _by_output(a: Analysis, pruner: GreedyPruner, kind: str, fraction: float, round_to: int, min_channels: int,
               overrides: dict[int, int], widths: dict[int, np.ndarray] | None, model) -> dict[int, int]:
    found, fixed = _by_curves(a, _output_curves(pruner, round_to, min_channels), model, fraction, round_to,
                              min_channels, overrides, widths)
    # each curve is one group pruned alone; how the groups' errors add up is checked on stand-ins of the whole
    # allocation: uniform, halfway and output-aware counts, the lowest held-out output loss wins
    # (docs/DESIGN.md, "Counts and allocation")
    sens = pruner._sensitivity  # type: ignore[attr-defined]
    uniform = counts_for_target(a, fraction, kind, round_to, min_channels, overrides, widths=widths, model=model)
    candidates = {"uniform": uniform, "halfway": blend(model, uniform, found, 0.5, fraction * model.total, round_to,
                                                       min_channels, set(fixed), widths), "output": found}
    losses = {name: sens.joint_loss(c) for name, c in candidates.items()}
    sens.forget()
    chosen = min(losses, key=lambda k: losses[k])
    pruner.allocation = {"chosen": chosen, "held_out_output_loss": losses}
    log.info("allocation: %s (held-out output loss of the stand-ins: %s)", chosen,
             ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
    return candidates[chosen]


def used_allocation(allocate: Allocation, pruner: GreedyPruner | None) -> Allocation:
    """The allocation a run uses: auto is output with calibration data (a pruner) and uniform without; a
    pruner that already fell back from auto to uniform (`_allocate`) keeps uniform."""
    if pruner is None:
        return Allocation.UNIFORM
    if pruner.allocated is None:
        pruner.allocated = Allocation.OUTPUT if allocate == Allocation.AUTO else allocate
    return pruner.allocated


def _curves(pruner: GreedyPruner) -> dict[int, np.ndarray]:
    """Loss curves, computed once per run (a latency target allocates several times)."""
    cached = getattr(pruner, "_loss_curves", None)
    if cached is None:
        cached = loss_curves(pruner)
        pruner._loss_curves = cached  # type: ignore[attr-defined]
    return cached


def _output_curves(pruner: GreedyPruner, round_to: int, min_channels: int) -> dict[int, np.ndarray]:
    """Output-aware curves (`sensitivity.py`), measured once per run."""
    cached = getattr(pruner, "_output_curves", None)
    if cached is None:
        pruner._sensitivity = Sensitivity(pruner)  # type: ignore[attr-defined]
        cached = pruner._sensitivity.curves(round_to, min_channels)  # type: ignore[attr-defined]
        pruner._output_curves = cached  # type: ignore[attr-defined]
    return cached


def _next_goal(points: list[tuple[float, float]], fraction: float) -> float:
    """The predicted ratio to aim at next: between the two closest tries that measured on either side of
    the target, interpolated linearly; with tries on one side only, the last one's measured/predicted error
    carried over (the model's error at an allocation is assumed to hold nearby)."""
    below = [p for p in points if p[1] < fraction]
    above = [p for p in points if p[1] > fraction]
    if below and above:
        (p0, m0), (p1, m1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
        return p0 + (fraction - m0) * (p1 - p0) / (m1 - m0) if m1 != m0 else (p0 + p1) / 2
    p, m = points[-1]
    return p * fraction / m


def _latency_plan(analysis: Analysis, pruner: GreedyPruner | None, fraction: float, target: TargetOptions,
                  overrides: dict[int, int], measure: Measure) -> Plan:
    timer = measure.timer
    table = build_table(analysis, timer, measure.batch, measure.example)
    log.info("latency table: %d groups on %s at batch %d%s", len(table.groups), measure.runtime.provider,
             measure.batch, " (cached)" if table.cached else f", measured in {table.build_s:.1f}s")
    model = LatencyModel(analysis, table)
    allowed = constrained(analysis, model.allowed(target.min_channels), target.min_channels)
    if target.round_to != AUTO:  # an explicit rounding restricts the fast widths to its multiples
        k = int(target.round_to)
        allowed = {g: np.array(sorted({int(w) for w in ws if w % k == 0} | {int(ws[-1])}), dtype=np.int64)
                   for g, ws in allowed.items()}
    for g, n in overrides.items():
        allowed[g] = np.array([n], dtype=np.int64)
    floor = counts_for_ratio(analysis, 0.0, 1, target.min_channels, overrides, allowed)
    least = model(model.vector(floor)) / model.total
    aim: CountCost = model   # the cost the allocation aims with; the measurement corrects its goal
    aim_note = None
    if least > fraction * (1 + LATENCY_TOLERANCE):  # the prediction says so; the measurement decides
        got = speedup(timer, analysis.model, variant(analysis, floor), measure.batch, measure.example)
        if 1.0 / got["speedup"] > fraction * (1 + LATENCY_TOLERANCE):
            raise OptionError("latency", fraction, f"unreachable; the least this model allows (frozen groups, "
                              f"min_channels, its fast widths) measured {1.0 / got['speedup']:.3f} of the original's "
                              "latency")
        if least >= 1.0 - LATENCY_TOLERANCE:
            # the tables predict (almost) no saving anywhere, which the measurement contradicts: they cannot aim
            # (the cuts' times did not add up to the model's, e.g. wall-clock noise); aim with the MACs over the
            # same fast widths, and let the measured correction find the goal
            aim_note = (f"the latency tables predicted {least:.3f} of the original's latency at the smallest "
                        f"allowed widths, which measured {1.0 / got['speedup']:.3f}: allocated by MACs over the "
                        "fast widths, corrected by measurement")
            log.warning("latency %.3f: %s", fraction, aim_note)
            aim = macs_model(analysis)
            least = aim(aim.vector(floor)) / aim.total
    iterations: list[dict] = []
    tried: list[tuple[dict[int, int], float]] = []
    points: list[tuple[float, float]] = []   # (predicted ratio of an allocation, its measured ratio)
    goal = fraction
    for _ in range(LATENCY_ROUNDS):
        found = _allocate(analysis, pruner, "latency", float(np.clip(goal, least, 1.0)), target, overrides, 1,
                          allowed, aim)
        if any(found == t for t, _ in tried):
            break  # the allowed widths give nothing else near this goal
        predicted = float(aim(aim.vector(found)) / aim.total)
        got = speedup(timer, analysis.model, variant(analysis, found), measure.batch, measure.example)
        measured = 1.0 / got["speedup"]
        iterations.append({"goal": goal, "predicted_ratio": predicted, "measured_ratio": measured,
                           "original_ms": got["original_ms"], "pruned_ms": got["pruned_ms"],
                           "counts": {str(g): int(n) for g, n in sorted(found.items())}})
        tried.append((found, measured))
        points.append((predicted, measured))
        if abs(measured / fraction - 1) <= LATENCY_TOLERANCE:
            break
        goal = float(np.clip(_next_goal(points, fraction), least, 1.0))
        if any(abs(goal - p) < 1e-6 for p, _ in points):
            break  # nothing new to try
    met = [t for t in tried if t[1] <= fraction * (1 + LATENCY_TOLERANCE)]
    best = max(met, key=lambda t: t[1]) if met else min(tried, key=lambda t: t[1])
    if not met:
        log.warning("latency %.3f: the closest allocation measured %.3f of the original's latency after %d tries",
                    fraction, best[1], len(tried))
    counts = best[0]
    groups = {}
    s = model.group_ms(model.vector(counts))[0]
    for i, g in enumerate(model.gids):
        t = table.groups.get(g)
        groups[str(g)] = {"width": int(counts[g]), "full_ms": float(model.full[i]), "kept_ms": float(s[i]),
                          "widths": list(t.widths) if t else [], "ms": list(t.ms) if t else [],
                          "fast": [int(w) for w in allowed[g]], "error": t.error if t else None}
    latency = {"kind": "latency", "target": fraction, **measure.describe(),
               "predicted_original_ms": float(model.total),
               "predicted_pruned_ms": float(model(model.vector(counts))),
               "table_original_ms": float(table.full_ms), "overhead_ms": float(table.overhead_ms),
               "iterations": iterations, "groups": groups}
    if aim_note:
        latency["aimed_by"], latency["aim_note"] = "macs", aim_note  # iterations' predicted_ratio: MACs
    return Plan(counts, allowed, latency, measure)


def loss_curves(pruner: GreedyPruner) -> dict[int, np.ndarray]:
    """Relative imitation loss at every kept count, for every group, on the original network (one pass
    over the calibration data). Channels are added in the method's own order; the loss is the one the
    chosen re-fit reaches: the consumers' full re-fit (`refit_curve`) or least-squares γ."""
    a = pruner.analysis
    groups, consumers = {}, {}
    for g in a.prunable:
        try:
            cs = consumers_of(a, g)
        except NotSupported:
            continue
        groups[g.id] = cs
        for c in cs:
            consumers[c.node] = c
    if not consumers:
        return {}
    col = pruner.collector(list(consumers.values()))
    names = [c.input for c in consumers.values()] + [c.output for c in consumers.values()]
    tap = Tap(a.model, names)
    col.run(pruner.cal, tap, tap, "profiling")
    curves = {}
    alive = np.ones(len(a.class_of), bool)
    for gid, cs in groups.items():
        g = a.groups[gid]
        problem = LocalProblem(pruner, g, g.channels, cs, col, alive, np.ones(len(alive)), constrained=False)
        order, losses = pruner.method.profile_order(problem)
        if pruner.refit == Refit.FULL:
            curve = np.sum([refit_curve(col.stats["calib"][x.node], member(a, g, x), order) for x in cs], axis=0)
        else:
            curve = losses if losses is not None else greedy.prefix_losses(problem.G, problem.c, problem.rr, order)
        curve = np.asarray(curve) / max(problem.rr, 1e-300)
        curves[gid] = np.concatenate([curve, np.full(g.channels + 1 - len(curve), curve[-1])])
    return curves
