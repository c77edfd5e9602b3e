"""How many channels each group keeps in a calibrated run (docs/DESIGN.md, "Counts and allocation").

A keep ratio gives counts directly. A MACs/params fraction is shared either by one uniform ratio, or by
loss (`allocate=loss`): one profiling pass over the calibration data on the original network gives
every group's relative imitation loss at every kept count, along the method's own channel order and
with the chosen re-fit, and channels go where the loss rises least per unit of cost saved; or by output
loss (`allocate=output`, `sensitivity.py`): the same, with the network's output loss when each group
alone is pruned to a few widths; that allocation, the uniform one and one halfway between are then
tried as stand-ins (every group pruned at once, each with its decision on the original network) and the
lowest held-out output loss is kept. MACs targets
are then measured on a stand-in selection and moved within 2%.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from ..analysis.cost_model import macs_model, params_model
from ..calibration.taps import Tap
from ..options import Allocation, OptionError, Refit, TargetOptions
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


def counts(pruner: GreedyPruner, target: TargetOptions, overrides: dict[int, int]) -> dict[int, int]:
    a = pruner.analysis
    kind, fraction = target.check_one_target()
    if kind == "keep_ratio":
        return counts_for_ratio(a, fraction, target.round_to, target.min_channels, overrides)
    found = _allocate(pruner, kind, fraction, target, overrides)
    if kind != "flops":
        return found
    # the cost model spreads a group's count evenly; measure it on a stand-in selection (the same
    # per-piece quotas as the real one) and move single steps of free groups until within 2%
    sel = select(a, found, "magnitude", pruner.options.selection.norm)
    fit_to_target(a, sel, {g: v for g, v in sel.scores.items() if g not in overrides}, fraction, target.min_channels,
                  round_to=target.round_to)
    return {g: len(v) for g, v in sel.kept.items()}


def _allocate(pruner: GreedyPruner, kind: str, fraction: float, target: TargetOptions,
              overrides: dict[int, int]) -> dict[int, int]:
    a = pruner.analysis
    round_to, min_channels = target.round_to, target.min_channels
    if target.allocate == Allocation.UNIFORM:
        return counts_for_target(a, fraction, kind, round_to, min_channels, overrides)
    model = macs_model(a) if kind == "flops" else params_model(a)
    if not 0 < fraction <= 1:
        raise OptionError(kind, fraction, "must be in (0, 1]")
    check_reachable(model, counts_for_ratio(a, 0.0, round_to, min_channels, overrides), fraction, kind, 0.02)
    sens = Sensitivity(pruner) if target.allocate == Allocation.OUTPUT else None
    curves = sens.curves(round_to, min_channels) if sens is not None else loss_curves(pruner)
    fixed = dict(overrides)
    for g in a.prunable:  # groups without statistics keep the uniform share
        if g.id not in curves and g.id not in fixed:
            fixed[g.id] = counts_for_ratio(a, fraction, round_to, min_channels)[g.id]
    found = allocate_by_loss(model, curves, fraction, round_to, min_channels, fixed)
    if sens is None:
        return found
    # each curve is one group pruned alone; how the groups' errors add up is checked on stand-ins of the whole
    # allocation: uniform, halfway and output-aware counts, the lowest held-out output loss wins
    uniform = counts_for_target(a, fraction, kind, round_to, min_channels, overrides)
    candidates = {"uniform": uniform, "halfway": blend(model, uniform, found, 0.5, fraction * model.total, round_to,
                                                       min_channels, set(fixed)), "output": found}
    losses = {name: sens.joint_loss(c) for name, c in candidates.items()}
    chosen = min(losses, key=lambda k: losses[k])
    pruner.allocation = {"chosen": chosen, "held_out_output_loss": losses}
    log.info("allocation: %s (held-out output loss of the stand-ins: %s)", chosen,
             ", ".join(f"{k} {v:.4g}" for k, v in losses.items()))
    return candidates[chosen]


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
