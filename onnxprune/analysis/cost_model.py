"""`CostModel`: MACs (or parameters) for any vector of per-group kept counts, in one numpy expression.

Every cost term is base × Π (kept share of each factor), and a factor's kept share is a linear function
of the groups' kept fractions (channels of a group fill a factor's positions evenly, e.g. the H·W
features per channel after Flatten).
"""
from __future__ import annotations

import numpy as np

from ..graph.params import count_params
from .analyzer import Analysis


class CountCost:
    """What the allocation needs of a cost: called on count vectors (one [groups] or many [k, groups]),
    `gids` and `channels` (the groups' full widths, in that order), `vector` and `total`. `CostModel` (MACs,
    parameters) and the latency stage's `LatencyModel` are the two."""
    gids: list[int]
    channels: np.ndarray

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def vector(self, counts: dict[int, int]) -> np.ndarray:
        """Per-group counts (missing groups at full width) as a vector in `gids` order."""
        return np.array([counts.get(g, int(c)) for g, c in zip(self.gids, self.channels)], dtype=np.float64)

    @property
    def total(self) -> float:
        """The cost at full width."""
        return float(self(self.channels))


class CostModel(CountCost):
    def __init__(self, analysis: Analysis, terms: list[tuple[float, list[np.ndarray]]]):
        self.analysis = analysis
        groups = analysis.prunable
        self.gids = [g.id for g in groups]
        col = {g.id: i for i, g in enumerate(groups)}
        roots = analysis.class_of
        factors: list[np.ndarray] = []
        keyed: dict[int, int] = {}
        bases: list[float] = []
        slots: list[list[int]] = []
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
            bases.append(base)
            slots.append(idx)
        width = max((len(s) for s in slots), default=0)
        self.slots = np.array([s + [-1] * (width - len(s)) for s in slots], dtype=np.int64).reshape(len(slots), width)
        self.base = np.array(bases, dtype=np.float64)
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



def macs_model(analysis: Analysis) -> CostModel:
    return CostModel(analysis, [(c.macs, c.factors) for c in analysis.costs])


def params_model(analysis: Analysis) -> CostModel:
    """Parameters: each weight tensor scales with the kept share along every edited axis."""
    edited: dict[tuple[int, int], list[np.ndarray]] = {}
    for e in analysis.edits:
        if e.kind in ("producer", "param", "consumer", "grouped_consumer"):
            edited.setdefault((e.node, e.input), []).append(e.labels)
    terms: list[tuple[float, list[np.ndarray]]] = []
    counted = 0.0
    for (node, inp), facs in edited.items():
        n = analysis.graph.nodes[node]
        if inp < len(n.inputs) and not n.inputs[inp].is_empty() and np.issubdtype(n.inputs[inp].values.dtype,
                                                                                   np.floating):
            size = float(n.inputs[inp].values.size)
            terms.append((size, facs))
            counted += size
    terms.append((float(count_params(analysis.model)) - counted, []))
    return CostModel(analysis, terms)
