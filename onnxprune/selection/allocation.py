"""Allocation of a MACs, parameters or latency budget across groups by marginal imitation loss per unit of
cost (`allocate_by_loss`), the reachability check of a target, and the nudging of counts towards it
(`refine`). Costs come from a cost model with the interface of the analysis's `CostModel` (the latency
stage's `LatencyModel` is one). Counts move in steps of `round_to`, or, given `widths` (group id ->
sorted allowed counts, e.g. a latency table's fast widths), from one allowed count to the next
(docs/DESIGN.md, "Counts and allocation")."""
from __future__ import annotations

import numpy as np

from ..analysis.cost_model import CostModel
from ..options import OptionError


def _step(group, round_to: int) -> int:
    return int(np.lcm(max(1, round_to), group.multiple))


def _lowest(group, min_channels: int, round_to: int) -> int:
    lo = int(np.ceil(max(min_channels, group.fewest) / group.multiple)) * group.multiple
    return min(lo, group.channels)


def _neighbours(allowed: np.ndarray, n: float) -> list[int]:
    """The allowed counts just below and just above n."""
    i = int(np.searchsorted(allowed, n))
    below = [int(allowed[i - 1])] if i > 0 else []
    j = i + 1 if i < len(allowed) and allowed[i] == n else i
    return below + ([int(allowed[j])] if j < len(allowed) else [])


def refine(model: CostModel, counts: dict[int, int], target: float, round_to: int, min_channels: int,
           fixed: set[int], widths: dict[int, np.ndarray] | None = None) -> dict[int, int]:
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
            steps = (vec[i] - s, vec[i] + s) if widths is None else _neighbours(widths[g.id], vec[i])
            for k2 in steps:
                if widths is not None or _lowest(g, min_channels, round_to) <= k2 <= g.channels:
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
                     min_channels: int, overrides: dict[int, int], tolerance: float = 0.02,
                     widths: dict[int, np.ndarray] | None = None, refined: bool = True) -> dict[int, int]:
    """Remove channels where the relative imitation loss rises least per unit of cost saved.

    `curves[g][n]` is group g's relative loss when it keeps n channels (greedy path). With `widths`, a group
    steps down its allowed counts (by about 1/64 of its channels, one allowed count at least). Without
    `refined`, the result is the first allocation at or under the budget (no nudging back towards it)."""
    analysis = model.analysis
    target = fraction * model.total
    vec = model.vector(overrides)
    free = [i for i, g in enumerate(model.gids) if g not in overrides and g in curves]
    chunk = {i: max(_step(analysis.groups[model.gids[i]], round_to),
                    _step(analysis.groups[model.gids[i]], round_to) *
                    (analysis.groups[model.gids[i]].channels // 64 // _step(analysis.groups[model.gids[i]], round_to)))
             for i in free}
    if widths is not None:
        chunk = {i: max(1, analysis.groups[model.gids[i]].channels // 64) for i in free}
    cost = model(vec)
    while cost > target:
        cands, rows = [], []
        for i in free:
            g = analysis.groups[model.gids[i]]
            n = int(vec[i])
            if widths is not None:
                lower = widths[g.id][widths[g.id] < n]
                far = lower[lower <= n - chunk[i]]
                s = n - int(far.max() if len(far) else lower.max()) if len(lower) else 0
            else:
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
        ratio = np.where(saved > 0, ratio, np.inf)  # a step that saves nothing (a measured cost) is no step
        if not np.isfinite(ratio).any():
            break
        j = int(np.argmin(ratio))
        vec = rows[j]
        cost = model(vec)
    if widths is not None:
        vec = exchange(model, vec, curves, target, widths, free)
    counts = {g: int(v) for g, v in zip(model.gids, vec)}
    if not refined:
        return counts
    return refine(model, counts, target, round_to, min_channels, set(overrides), widths)


def exchange(model: CostModel, vec: np.ndarray, curves: dict[int, np.ndarray], budget: float,
             widths: dict[int, np.ndarray], free: list[int], reach: int = 8, passes: int = 64) -> np.ndarray:
    """Improve an allocation within the budget by single and paired moves between allowed counts: one group
    up by up to `reach` allowed counts (when the budget allows), or one group up and another down by up to
    `reach` allowed counts each; the move that lowers the summed loss most is applied, until none does. The
    greedy step alone is myopic when allowed counts are coarse (a latency table's fast widths): a group that
    saves much per step is shrunk too far."""
    gids = model.gids
    table = {i: np.asarray(curves[gids[i]], np.float64) for i in free}

    def losses(rows: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows))
        for i in free:
            out += table[i][np.minimum(rows[:, i].astype(np.int64), len(table[i]) - 1)]
        return out

    vec = vec.copy()
    current = float(losses(vec[None])[0])
    for _ in range(passes):
        trials = []
        for i in free:
            for u in widths[gids[i]][widths[gids[i]] > vec[i]][:reach]:
                up = vec.copy()
                up[i] = u
                trials.append(up)
                for j in free:
                    if j == i:
                        continue
                    for d in widths[gids[j]][widths[gids[j]] < vec[j]][::-1][:reach]:
                        t = up.copy()
                        t[j] = d
                        trials.append(t)
        if not trials:
            break
        rows = np.array(trials)
        got = np.where(model(rows) <= budget, losses(rows), np.inf)
        k = int(np.argmin(got))
        if not got[k] < current - 1e-12:
            break
        vec, current = rows[k], float(got[k])
    return vec
