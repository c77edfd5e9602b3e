"""How many channels each group keeps.

`CostModel` evaluates MACs (or parameters) for any vector of per-group kept counts in one numpy
expression: every cost term is base × Π (kept share of each factor), and a factor's kept share is a
linear function of the groups' kept fractions (channels of a group fill a factor's positions evenly,
e.g. the H·W features per channel after Flatten).

Targets: a uniform keep ratio; a MACs/params fraction reached by searching the uniform ratio, or by
allocating channels across groups by marginal imitation loss per MAC (`allocate_by_loss`); per-group
overrides; rounding to multiples; a minimum per group. The result is then nudged group by group to
land within the tolerance of the target.
"""
from __future__ import annotations

import numpy as np

from .analysis import Analysis
from .errors import UserError


class CostModel:
    def __init__(self, analysis: Analysis, terms: list[tuple[float, list[np.ndarray]]]):
        self.analysis = analysis
        groups = analysis.prunable
        self.gids = [g.id for g in groups]
        col = {g.id: i for i, g in enumerate(groups)}
        roots = analysis.class_of
        factors, keyed = [], {}
        self.base, slots = [], []
        for base, facs in terms:
            idx = []
            for f in facs:
                key = id(f)
                if key not in keyed:
                    w = np.zeros(len(groups) + 1)
                    for c in roots[f].tolist():
                        gid = analysis.group_of_class.get(c)
                        w[col[gid] if gid in col else -1] += 1.0
                    keyed[key] = len(factors)
                    factors.append(w / max(len(f), 1))
                idx.append(keyed[key])
            self.base.append(base)
            slots.append(idx)
        width = max((len(s) for s in slots), default=0)
        self.slots = np.array([s + [-1] * (width - len(s)) for s in slots], dtype=np.int64).reshape(len(slots), width)
        self.base = np.array(self.base, dtype=np.float64)
        F = np.array(factors).reshape(len(factors), len(groups) + 1)
        self.W, self.w0 = F[:, :-1], F[:, -1]
        self.channels = np.array([g.channels for g in groups], dtype=np.float64)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """Cost for one count vector (shape [groups]) or many (shape [k, groups])."""
        r = np.atleast_2d(np.asarray(counts, np.float64)) / self.channels
        frac = r @ self.W.T + self.w0                           # k × factors
        frac = np.concatenate([frac, np.ones((len(frac), 1))], 1)  # slot -1 -> 1.0
        prod = np.ones((len(frac), len(self.base)))
        for j in range(self.slots.shape[1]):
            prod *= frac[:, self.slots[:, j]]
        out = prod @ self.base
        return out if np.ndim(counts) == 2 else out[0]

    def vector(self, counts: dict[int, int]) -> np.ndarray:
        return np.array([counts.get(g, int(c)) for g, c in zip(self.gids, self.channels)], dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self(self.channels))


def macs_model(analysis: Analysis) -> CostModel:
    return CostModel(analysis, [(c.macs, c.factors) for c in analysis.costs])


def params_model(analysis: Analysis) -> CostModel:
    """Parameters: each weight tensor scales with the kept share along every edited axis."""
    from .cost import count_params
    edited: dict[tuple[int, int], list[np.ndarray]] = {}
    for e in analysis.edits:
        if e.kind in ("producer", "param", "consumer", "grouped_consumer"):
            edited.setdefault((e.node, e.input), []).append(e.labels)
    terms, counted = [], 0
    for (node, inp), facs in edited.items():
        n = analysis.graph.nodes[node]
        if inp < len(n.inputs) and not n.inputs[inp].is_empty() and np.issubdtype(n.inputs[inp].values.dtype,
                                                                                   np.floating):
            size = float(n.inputs[inp].values.size)
            terms.append((size, facs))
            counted += size
    terms.append((float(count_params(analysis.model)) - counted, []))
    return CostModel(analysis, terms)


def _step(group, round_to: int) -> int:
    return int(np.lcm(max(1, round_to), group.multiple))


def _lowest(group, min_channels: int, round_to: int) -> int:
    lo = int(np.ceil(max(min_channels, group.fewest) / group.multiple)) * group.multiple
    return min(lo, group.channels)


def refine(model: CostModel, counts: dict[int, int], target: float, round_to: int, min_channels: int,
           fixed: set[int]) -> dict[int, int]:
    """Move single groups one step while that brings the cost closer to the target."""
    analysis = model.analysis
    vec = model.vector(counts)
    err = abs(model(vec) - target)
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
        raise UserError(f"--{what} {fraction}: unreachable; the least this model allows (frozen groups, "
                        f"--min-channels, --round-to) is {floor:.3f} of the original")


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
