"""`LatencyModel`: the predicted latency of any vector of per-group kept counts, from a latency table,
with the interface of `analysis.cost_model.CostModel` so that the allocation treats it as one more cost
(docs/DESIGN.md, "Latency").

Each node's time is taken to scale with a factor ρ_g(w) per group g whose channels it reads or writes
(the same factor for every node of the group), so a node between groups g and h costs τ ρ_g ρ_h. With
S_g(w) the measured time of g's cut at width w (others full), O the empty run and P_gh the time of the
nodes both cuts share:

    ρ_g(w) = (S_g(w) − O) / (S_g(C_g) − O)
    T(w)   = T(C) + Σ_g [S_g(w_g) − S_g(C_g)] + Σ_{g,h} (P_gh − O)(ρ_g(w_g) − 1)(ρ_h(w_h) − 1)

which is exact when every node's time is such a product and no node touches three groups; the first sum
alone (the additive model) double-counts what two shrinking groups save in the nodes between them.
Between the table's widths S_g is interpolated linearly (and towards O at width 0).
"""
from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from .table import LatencyTable


class LatencyModel:
    def __init__(self, analysis: Analysis, table: LatencyTable):
        self.analysis, self.table = analysis, table
        groups = analysis.prunable
        self.gids = [g.id for g in groups]
        self.channels = np.array([g.channels for g in groups], dtype=np.float64)
        self.overhead = float(table.overhead_ms)
        col = {g: i for i, g in enumerate(self.gids)}
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self.full = np.zeros(len(groups))
        for i, g in enumerate(groups):
            t = table.groups.get(g.id)
            if t is None or t.error is not None or not t.ms:
                xs, ys = np.array([0.0, g.channels]), np.array([1.0, 1.0])   # not measured: no effect
            else:
                order = np.argsort(t.widths)
                xs = np.concatenate([[0.0], np.asarray(t.widths, np.float64)[order]])
                ys = np.concatenate([[self.overhead], np.asarray(t.ms, np.float64)[order]])
            self.xs.append(xs)
            self.ys.append(ys)
            self.full[i] = float(np.interp(g.channels, xs, ys))
        pairs = [(col[g], col[h], ms - self.overhead) for g, h, ms in table.pairs if g in col and h in col]
        self.pi = np.array([p[0] for p in pairs], dtype=np.int64)
        self.pj = np.array([p[1] for p in pairs], dtype=np.int64)
        self.tau = np.array([p[2] for p in pairs], dtype=np.float64)

    def group_ms(self, counts: np.ndarray) -> np.ndarray:
        """S_g(w_g) for every group (columns) of one count vector or many (rows)."""
        c = np.atleast_2d(np.asarray(counts, np.float64))
        return np.stack([np.interp(c[:, i], self.xs[i], self.ys[i]) for i in range(len(self.gids))], axis=1)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """Predicted milliseconds for one count vector (shape [groups]) or many (shape [k, groups])."""
        s = self.group_ms(counts)
        denom = np.where(np.abs(self.full - self.overhead) > 1e-12, self.full - self.overhead, 1.0)
        rho = (s - self.overhead) / denom
        out = self.table.full_ms + (s - self.full).sum(axis=1)
        if len(self.tau):
            out = out + ((rho[:, self.pi] - 1.0) * (rho[:, self.pj] - 1.0)) @ self.tau
        return out if np.ndim(counts) == 2 else out[0]

    def additive(self, counts: np.ndarray) -> np.ndarray:
        """The additive prediction T(C) + Σ_g [S_g(w_g) − S_g(C_g)], without the interaction terms."""
        out = self.table.full_ms + (self.group_ms(counts) - self.full).sum(axis=1)
        return out if np.ndim(counts) == 2 else out[0]

    def vector(self, counts: dict[int, int]) -> np.ndarray:
        return np.array([counts.get(g, int(c)) for g, c in zip(self.gids, self.channels)], dtype=np.float64)

    @property
    def total(self) -> float:
        return float(self(self.channels))

    def allowed(self, min_channels: int = 1) -> dict[int, np.ndarray]:
        """Per group, the table's fast widths (at least `min_channels`, and the full width)."""
        out = {}
        for gid, c in zip(self.gids, self.channels):
            t = self.table.groups.get(gid)
            fast = self.table.fast_widths(gid) if t is not None else [int(c)]
            out[gid] = np.array(sorted({w for w in fast if w >= min_channels} | {int(c)}), dtype=np.int64)
        return out
