"""Allocation of a MACs or parameters budget across groups by marginal imitation loss per unit of cost
(`allocate_by_loss`), the reachability check of a target, and the nudging of counts towards it
(`refine`). Costs come from the analysis's `CostModel`."""
from __future__ import annotations

import numpy as np

from ..analysis.cost_model import CostModel
from ..options import OptionError


def _step(group, round_to: int) -> int:
    return group.count_step(round_to)


def _lowest(group, min_channels: int, round_to: int) -> int:
    lo = int(np.ceil(max(min_channels, group.fewest) / group.multiple)) * group.multiple
    return min(lo, group.channels)


def refine(model: CostModel, counts: dict[int, int], target: float, round_to: int, min_channels: int,
           fixed: set[int]) -> dict[int, int]:
    """Move single groups one step while that brings the cost closer to the target."""
    analysis = model.analysis
    vec = model.vector(counts)
    err = float(abs(model(vec) - target))
    movable = [i for i, g in enumerate(model.gids) if g not in fixed]
    for _ in range(4 * len(movable) + 16):
        trials, moves = [], []
        for i in movable:
            g = analysis.groups[model.gids[i]]
            s = _step(g, round_to)
            for k2 in (vec[i] - s, vec[i] + s):
                if _lowest(g, min_channels, round_to) <= k2 <= g.channels:
                    t = vec.copy()
                    t[i] = k2
                    trials.append(t)
                    moves.append(i)
        if not trials:
            break
        costs = np.abs(model(np.array(trials)) - target)
        j = int(np.argmin(costs))
        if costs[j] >= err:
            break
        err, vec = float(costs[j]), trials[j]
    return {g: int(v) for g, v in zip(model.gids, vec)}


def check_reachable(model: CostModel, floor_counts: dict[int, int], fraction: float, what: str,
                    tolerance: float) -> None:
    floor = model(model.vector(floor_counts)) / model.total
    if floor > fraction * (1 + tolerance):
        raise OptionError(what, fraction, f"unreachable; the least this model allows (frozen groups, min_channels, "
                          f"round_to) is {floor:.3f} of the original")


def allocate_by_loss(model: CostModel, curves: dict[int, np.ndarray], fraction: float, round_to: int,
                     min_channels: int, overrides: dict[int, int], tolerance: float = 0.02) -> dict[int, int]:
    """Remove channels where the relative imitation loss rises least per unit of cost saved.

    `curves[g][n]` is group g's relative loss when it keeps n channels (greedy path)."""
    analysis = model.analysis
    target = fraction * model.total
    vec = model.vector(overrides)
    free = [i for i, g in enumerate(model.gids) if g not in overrides and g in curves]
    chunk = {i: max(_step(analysis.groups[model.gids[i]], round_to),
                    _step(analysis.groups[model.gids[i]], round_to) *
                    (analysis.groups[model.gids[i]].channels // 64 // _step(analysis.groups[model.gids[i]], round_to)))
             for i in free}
    cost = model(vec)
    while cost > target:
        cands, rows = [], []
        for i in free:
            g = analysis.groups[model.gids[i]]
            n = int(vec[i])
            s = min(chunk[i], n - _lowest(g, min_channels, round_to))
            if s <= 0:
                continue
            t = vec.copy()
            t[i] = n - s
            curve = curves[model.gids[i]]
            cands.append((i, float(curve[min(n - s, len(curve) - 1)] - curve[min(n, len(curve) - 1)])))
            rows.append(t)
        if not rows:
            break
        saved = cost - model(np.array(rows))
        ratio = np.array([max(d, 0.0) for _, d in cands]) / np.maximum(saved, 1e-12)
        j = int(np.argmin(ratio))
        vec = rows[j]
        cost = model(vec)
    counts = {g: int(v) for g, v in zip(model.gids, vec)}
    return refine(model, counts, target, round_to, min_channels, set(overrides))
