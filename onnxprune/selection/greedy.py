"""Greedy selection on a group's statistics (G, c, rr): loss(S, γ) = rr − 2γᵀc_S + γᵀG_SSγ.

- `greedy_local`: forward selection with a least-squares refit of γ after every pick (free γ);
  incremental Cholesky keeps choosing n of C channels at O(C·n²).
- `greedy_convex`: the paper's convex-hull step: f ← (1−η)f + η·M·Z_k with the best η ∈ [0, 1] by
  exact line search (M = number of channels, so the original Σ_k Z_k lies in the hull).
- `gfs`: greedy forward selection with the fixed step η = 1/t, then one optimal global scale.
Channels may be picked again by the last two (that only moves γ). `quota[b]` limits picks in block b
(grouped convolutions keep equal counts per block, split pieces proportional ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Path:
    order: list[int]          # channels in the order they were first picked
    losses: np.ndarray        # loss with the first n channels, n = 0..len(order)
    gamma: np.ndarray | None = None   # γ for all of `order` (convex/gfs), None: least squares
    steps: list[float] | None = None  # step sizes η of every pick (convex/gfs)
    picks: list[int] | None = None    # every pick, repeats included (convex/gfs)


def _allowed(blocks: np.ndarray | None, quota: np.ndarray | None, taken: np.ndarray, size: int) -> np.ndarray:
    """Channels whose block has not yet used its quota of picks."""
    if blocks is None or quota is None:
        return np.ones(size, dtype=bool)
    counts = np.bincount(blocks[taken], minlength=len(quota))
    return counts[blocks] < np.asarray(quota)[blocks]


def greedy_local(G: np.ndarray, c: np.ndarray, rr: float, n: int, blocks=None, quota=None) -> Path:
    C = len(c)
    n = min(n, C)
    diag = np.diag(G).astype(np.float64).copy()
    V = np.zeros((n, C))              # rows: L⁻¹ G_{S,·}
    d = diag.copy()                   # G_kk − ‖v_k‖²
    r = c.astype(np.float64).copy()   # c_k − v_kᵀ z
    taken = np.zeros(C, dtype=bool)
    order, losses, loss = [], [rr], rr
    eps = 1e-12 * max(float(diag.max()), 1e-300)
    for step in range(n):
        ok = ~taken & _allowed(blocks, quota, np.flatnonzero(taken), C) & (d > eps)
        if not ok.any():
            ok = ~taken & _allowed(blocks, quota, np.flatnonzero(taken), C)
            if not ok.any():
                break
            # degenerate: the channel lies in the span of those taken (or the block quotas leave only such
            # channels); it is added without gain and without updating the factor, whose pivot would be ~0
            k = int(np.flatnonzero(ok)[np.argmax(diag[ok])])
            taken[k], d[k] = True, 0.0
            order.append(k)
            losses.append(loss)
            continue
        score = np.where(ok, r * r / np.maximum(d, eps), -np.inf)
        k = int(np.argmax(score))
        gain = float(score[k])
        lkk = np.sqrt(max(d[k], eps))
        e = (G[k] - V[:step, k] @ V[:step]) / lkk  # new row of L⁻¹ G_{S,·}
        z = r[k] / lkk
        V[step] = e
        d -= e * e
        r -= e * z
        taken[k] = True
        d[k] = 0.0
        order.append(k)
        loss = max(loss - gain, 0.0)
        losses.append(loss)
    return Path(order, np.array(losses))


def prefix_losses(G: np.ndarray, c: np.ndarray, rr: float, order) -> np.ndarray:
    """Loss with least-squares γ on the first n channels of `order`, for n = 0..len(order): with
    G_oo = L Lᵀ (in that order), the loss on a prefix is rr − ‖(L⁻¹c_o)_{<n}‖²."""
    o = np.asarray(order, dtype=np.int64)
    Go = G[np.ix_(o, o)]
    jitter = 1e-10 * float(np.abs(np.diag(Go)).mean() + 1e-300)
    L = torch.linalg.cholesky(torch.from_numpy(Go + jitter * np.eye(len(o))))
    z = torch.linalg.solve_triangular(L, torch.from_numpy(np.ascontiguousarray(c[o]))[:, None], upper=False)
    return np.maximum(rr - np.concatenate([[0.0], np.cumsum(z[:, 0].numpy() ** 2)]), 0.0)


def ls_gamma(G: np.ndarray, c: np.ndarray, idx) -> np.ndarray:
    """Least-squares γ on a kept set (torch.linalg; minimum-norm if G_SS is singular)."""
    idx = np.asarray(idx, dtype=np.int64)
    if len(idx) == 0:
        return np.zeros(0)
    Gs = torch.from_numpy(np.ascontiguousarray(G[np.ix_(idx, idx)]))
    cs = torch.from_numpy(np.ascontiguousarray(c[idx]))[:, None]
    jitter = 1e-10 * float(torch.diagonal(Gs).abs().mean() + 1e-300)
    sol = torch.linalg.lstsq(Gs + jitter * torch.eye(len(idx), dtype=Gs.dtype), cs, driver="gelsd").solution
    return sol[:, 0].numpy()


def _hull_path(G, c, rr, n, blocks, quota, fixed_step: bool, max_steps: int | None = None) -> Path:
    C = len(c)
    n = min(n, C)
    M = float(C)
    gamma = np.zeros(C)
    Gg = np.zeros(C)       # G γ
    loss = rr
    order: list[int] = []
    losses, steps, picks = [rr], [], []
    diag = np.diag(G)
    t = 0
    max_steps = max_steps or 4 * n + 8
    while len(order) < n and t < max_steps:
        t += 1
        taken = np.array(order, dtype=np.int64)
        ok = _allowed(blocks, quota, taken, C) | np.isin(np.arange(C), taken)
        gGg, gc = float(gamma @ Gg), float(gamma @ c)
        # f(η) = loss + η·b + η²·a  for moving γ towards M·e_k
        a = M * M * diag - 2 * M * Gg + gGg
        b = 2 * (M * (Gg - c) - (gGg - gc))
        if fixed_step:
            eta = np.full(C, 1.0 / t)
        else:
            eta = np.clip(np.where(a > 0, -b / (2 * np.where(a > 0, a, 1)), 1.0), 0.0, 1.0)
        new_loss = np.where(ok, loss + eta * b + eta * eta * a, np.inf)
        if not fixed_step and len(order) < n:
            # a step must not stall: among new channels take the best even if another re-pick is better
            fresh = ok & ~np.isin(np.arange(C), taken)
            if fresh.any() and t > 2 * n:
                new_loss = np.where(fresh, new_loss, np.inf)
        k = int(np.argmin(new_loss))
        e = float(eta[k])
        gamma *= (1 - e)
        Gg *= (1 - e)
        gamma[k] += e * M
        Gg += e * M * G[:, k]
        loss = max(float(new_loss[k]), 0.0)
        steps.append(e)
        picks.append(k)
        if k not in order:
            order.append(k)
            losses.append(loss)
    # one optimal scale of the whole combination (GFS's "scaled to match"; applied to both)
    if order:
        gGg, gc = float(gamma @ G @ gamma), float(gamma @ c)
        if gGg > 0:
            gamma *= gc / gGg
            loss = rr - gc * gc / gGg
            losses[-1] = min(losses[-1], loss)
    return Path(order, np.array(losses), gamma, steps, picks)


def greedy_convex(G, c, rr, n, blocks=None, quota=None) -> Path:
    return _hull_path(G, c, rr, n, blocks, quota, fixed_step=False)


def gfs(G, c, rr, n, blocks=None, quota=None) -> Path:
    return _hull_path(G, c, rr, n, blocks, quota, fixed_step=True)


SELECTORS = {"greedy-local": greedy_local, "greedy-convex": greedy_convex, "gfs": gfs}


class _OmpConsumer:
    """Group OMP state of one consumer: Q = L⁻¹A'_{S,·}, Z = L⁻¹B'_S over the chosen features S, the
    residual cross term R = B' − QᵀZ and the Schur blocks M_j = A'_jj − Q_jᵀQ_j of every channel."""

    def __init__(self, A, B, chan, n_channels):
        self.A, self.B = torch.from_numpy(A), torch.from_numpy(B)
        self.cols = [np.flatnonzero(chan == j) for j in range(n_channels)]
        width = max((len(c) for c in self.cols), default=0)
        if any(len(c) not in (0, width) for c in self.cols):
            raise ValueError("channels with different numbers of features")
        self.present = np.array([len(c) > 0 for c in self.cols])
        self.idx = torch.from_numpy(np.array([c if len(c) else np.zeros(width, np.int64) for c in self.cols]))
        self.Q = torch.zeros(0, A.shape[0], dtype=torch.float64)
        self.R = self.B.clone()
        self.M = self.A[self.idx[:, :, None], self.idx[:, None, :]].clone()   # C × k × k
        self.scale = float(torch.diagonal(self.A).mean()) if A.size else 1.0

    def gains(self) -> np.ndarray:
        """Residual reduction of adding each channel: tr(R_jᵀ M_j⁻¹ R_j)."""
        k = self.M.shape[1]
        if k == 0:
            return np.zeros(len(self.cols))
        Rj = self.R[self.idx]                                                   # C × k × out
        jitter = 1e-10 * self.scale * torch.eye(k, dtype=torch.float64)
        sol = torch.linalg.solve(self.M + jitter, Rj)
        g = (Rj * sol).sum((1, 2)).numpy()
        return np.where(self.present, np.maximum(g, 0.0), 0.0)

    def add(self, j: int) -> None:
        cols = self.cols[j]
        if not len(cols):
            return
        k = len(cols)
        Mj = self.M[j] + 1e-10 * self.scale * torch.eye(k, dtype=torch.float64)
        eye = torch.eye(k, dtype=torch.float64)
        Lj = torch.linalg.cholesky(Mj + 1e-12 * float(torch.trace(Mj).abs() + 1e-300) * eye)
        t = torch.from_numpy(cols)
        Qn = torch.linalg.solve_triangular(Lj, self.A[t] - self.Q[:, t].T @ self.Q, upper=False)   # k × F
        Zn = torch.linalg.solve_triangular(Lj, self.R[t], upper=False)                             # k × out
        self.Q = torch.cat([self.Q, Qn])
        self.R -= Qn.T @ Zn
        Qi = Qn[:, self.idx]                                                    # k × C × k
        self.M -= torch.einsum("sca,scb->cab", Qi, Qi)


def group_omp(consumers, n_channels: int, n: int, blocks=None, quota=None) -> Path:
    """Greedy selection by the residual after a full re-fit (group orthogonal matching pursuit): each step
    adds the channel whose features (its block of inputs in every consumer) lower the least-squares
    residual of all consumers most. `consumers`: (A', B', yy', channel of each feature) per consumer,
    conditioned on the inputs that stay (`statistics.conditioned`)."""
    states = [_OmpConsumer(A, B, chan, n_channels) for A, B, _, chan in consumers]
    loss = float(sum(c[2] for c in consumers))
    taken = np.zeros(n_channels, dtype=bool)
    order: list[int] = []
    losses = [loss]
    for _ in range(min(n, n_channels)):
        ok = ~taken & _allowed(blocks, quota, np.flatnonzero(taken), n_channels)
        if not ok.any():
            break
        gain = np.sum([s.gains() for s in states], axis=0)
        j = int(np.flatnonzero(ok)[np.argmax(gain[ok])])
        for s in states:
            s.add(j)
        taken[j] = True
        order.append(j)
        loss = max(loss - float(gain[j]), 0.0)
        losses.append(loss)
    return Path(order, np.array(losses))
