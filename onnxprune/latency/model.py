"""`LatencyModel`: the predicted latency of any vector of per-group kept counts, from a latency table,
with the interface of `analysis.cost_model.CostModel` so that the allocation treats it as one more cost
(docs/DESIGN.md, "Latency").

Each node's time is taken to scale with a factor ρ_g(w) per group g whose channels it reads or writes
(the same factor for every node of the group), so a node between groups g and h costs τ ρ_g ρ_h. With
S_g(w) the measured time of g's cut at width w (others full), O the empty run and τ_gh the time of the
nodes both cuts share:

    ρ_g(w) = (S_g(w) − O) / (S_g(C_g) − O)
    T(w)   = T(C) + Σ_g [S_g(w_g) − S_g(C_g)] + Σ_{g,h} τ_gh (ρ_g(w_g) − 1)(ρ_h(w_h) − 1)

τ_gh is measured in context, as the mixed difference of g's cut timed with g and h each at full and at
about 30% of its width (what either width costs on its own, e.g. reading a tensor, cancels); the shared nodes
timed alone (which adds the layout conversions ONNX Runtime puts at a cut's borders, large at batch 32,
and their linear costs) only stand in when that measurement is missing.

which is exact when every node's time is such a product and no node touches three groups; the first sum
alone (the additive model) double-counts what two shrinking groups save in the nodes between them. The
two sums are then scaled to fit a few whole-model timings of random allocations (`calibrate`).
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
        self.pi, self.pj, self.tau = self._interactions(col)
        self.base, self.scale, self.kappa = float(table.full_ms), 1.0, 1.0
        self.calibrate()

    def _terms(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Σ_g [S_g(w_g) − S_g(C_g)] and Σ τ_gh (ρ_g − 1)(ρ_h − 1), per row of `counts`."""
        s = self.group_ms(counts)
        denom = np.where(np.abs(self.full - self.overhead) > 1e-12, self.full - self.overhead, 1.0)
        rho = (s - self.overhead) / denom
        inter = ((rho[:, self.pi] - 1.0) * (rho[:, self.pj] - 1.0)) @ self.tau if len(self.tau) else np.zeros(len(s))
        return (s - self.full).sum(axis=1), inter

    def calibrate(self) -> None:
        """Fit T = T_0 + a Σ ΔS + b Σ interactions to the table's whole-model timings (the original, T_0, and
        a few random allocations, least squares, a in [0.5, 2], b in [0, 2]): what the cuts miss of their
        context (layout conversions ONNX Runtime inserts or drops around a shrunk group, memory traffic) is
        corrected on the whole model. Without those timings, a = b = 1."""
        checks = self.table.checks
        if len(checks) < 3:
            return
        self.base = float(checks[0][1])
        vecs = np.array([self.vector(c) for c, _ in checks[1:]])
        y = np.array([ms for _, ms in checks[1:]]) - self.base
        d, inter = self._terms(vecs)
        x = np.stack([d, inter], axis=1)
        coef = np.linalg.lstsq(x, y, rcond=None)[0] if np.abs(inter).sum() > 0 else np.array([np.nan, 0.0])
        if not np.isfinite(coef).all() or coef[1] < 0:
            coef = np.array([float(d @ y / max(d @ d, 1e-300)), 0.0])
        self.scale, self.kappa = float(np.clip(coef[0], 0.5, 2.0)), float(np.clip(coef[1], 0.0, 2.0))

    def _rho(self, i: int, w: float) -> float:
        return (float(np.interp(w, self.xs[i], self.ys[i])) - self.overhead) / max(self.full[i] - self.overhead, 1e-12)

    def _interactions(self, col: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """τ of every two groups whose cuts share nodes, from g's cut timed at the four corners of g and h
        each at full width and at about 30% of it (X): the mixed difference, in which what each width costs
        on its own cancels, τ = (X(w_g, w_h) − X(C_g, w_h) − X(w_g, C_h) + X(C_g, C_h)) / ((ρ_g(w_g) − 1)
        (ρ_h(w_h) − 1)); without it, the shared nodes timed alone, less the empty run. Clipped to [0, the
        smaller cut]."""
        x: dict[tuple[int, int], dict[tuple[int, int], float]] = {}
        for g, h, wh, wg, ms in self.table.cross:
            if g in col and h in col:
                x.setdefault((col[g], col[h]), {})[wh, wg] = ms
        est: dict[tuple[int, int], list[float]] = {}
        for (i, j), corners in x.items():
            cg, ch = int(self.channels[i]), int(self.channels[j])
            if len(corners) != 4:
                continue
            wh = min(w for w, _ in corners)
            wg = min(w for _, w in corners)
            dg, dh = self._rho(i, wg) - 1.0, self._rho(j, wh) - 1.0
            if dg > -0.1 or dh > -0.1:
                continue
            mixed = corners[wh, wg] - corners[ch, wg] - corners[wh, cg] + corners[ch, cg]
            est.setdefault((min(i, j), max(i, j)), []).append(mixed / (dg * dh))
        for g, h, ms in self.table.pairs:
            if g in col and h in col:
                est.setdefault((min(col[g], col[h]), max(col[g], col[h])), [ms - self.overhead])
        keys = sorted(est)
        tau = [float(np.clip(np.mean(est[k]), 0.0, min(self.full[k[0]], self.full[k[1]]) - self.overhead))
               for k in keys]
        return (np.array([k[0] for k in keys], dtype=np.int64), np.array([k[1] for k in keys], dtype=np.int64),
                np.array(tau, dtype=np.float64))

    def group_ms(self, counts: np.ndarray) -> np.ndarray:
        """S_g(w_g) for every group (columns) of one count vector or many (rows)."""
        c = np.atleast_2d(np.asarray(counts, np.float64))
        return np.stack([np.interp(c[:, i], self.xs[i], self.ys[i]) for i in range(len(self.gids))], axis=1)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        """Predicted milliseconds for one count vector (shape [groups]) or many (shape [k, groups])."""
        d, inter = self._terms(counts)
        out = self.base + self.scale * d + self.kappa * inter
        return out if np.ndim(counts) == 2 else out[0]

    def additive(self, counts: np.ndarray) -> np.ndarray:
        """The additive prediction T(C) + Σ_g [S_g(w_g) − S_g(C_g)] (no interactions, not calibrated)."""
        out = self.table.full_ms + self._terms(counts)[0]
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
