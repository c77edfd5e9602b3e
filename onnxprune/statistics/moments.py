"""Sufficient statistics of consumers, accumulated batch by batch (docs/DESIGN.md, "Statistics").

Each consumer (`statistics.consumer.Consumer`) is a linear map over *features*. Per consumer we
accumulate, over sampled output positions, with a constant feature appended for the bias:

    A = X̃ᵀX̃   (F+1)×(F+1)        B = X̃ᵀY   (F+1)×out        yy = Σ‖Y‖²

where X are the inputs in the network pruned so far and Y the original network's outputs. The Gram
matrix G and cross term c of a group, the loss of any (S, γ), and the ridge refit of a consumer's
whole weight all follow from these, so memory is bounded by F², never by the data set.
"""
from __future__ import annotations

import numpy as np
import torch


class Stats:
    """Streamed A = X̃ᵀX̃, B = X̃ᵀY, yy for one consumer."""

    def __init__(self, n_features: int, n_out: int, device: str = "cpu"):
        self.A = torch.zeros(n_features + 1, n_features + 1, dtype=torch.float64, device=device)
        self.B = torch.zeros(n_features + 1, n_out, dtype=torch.float64, device=device)
        self.yy = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(self.A.device)
        y = y.to(self.A.device)
        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
        self.A += xa.T @ xa
        self.B += xa.T @ y
        # numpy's pairwise sum is one thread: torch's splits by its thread count (not reproducible across them)
        yv = y.detach().cpu().numpy()
        self.yy += float(np.einsum("ij,ij->", yv, yv))
        self.rows += len(x)

    def numpy(self):
        return self.A.cpu().numpy(), self.B.cpu().numpy(), self.yy

    def loss(self, wt: np.ndarray) -> float:
        """‖Y − W̃X̃‖² summed over the rows seen, for a weight W̃ (out × (F+1))."""
        A, B, yy = self.numpy()
        return max(float(yy - 2 * (wt.T * B).sum() + np.einsum("of,fg,og->", wt, A, wt, optimize=True)), 0.0)


def group_terms(stats: list[tuple[Stats, np.ndarray, np.ndarray, np.ndarray]], n_channels: int):
    """G, c, rr of one group summed over its consumers.

    Each consumer comes as (stats, W̃ = [W, b] out×(F+1) current weights, member: group channel index of
    every feature or -1, alive: features still kept by earlier decisions). The loss of kept set S with
    scales γ is rr − 2γᵀc_S + γᵀG_SSγ: the group's features are scaled by γ, all others stay as they are.
    """
    G = np.zeros((n_channels, n_channels))
    c = np.zeros(n_channels)
    rr = 0.0
    for st, wt, member, alive in stats:
        A, B, yy = st.numpy()
        mem = np.append(member, -1)
        live = np.append(alive, True)
        g = np.flatnonzero(mem >= 0)
        phi = np.flatnonzero((mem < 0) & live)
        S = np.zeros((len(g), n_channels))
        S[np.arange(len(g)), mem[g]] = 1.0
        Wg, Wp = wt[:, g], wt[:, phi]
        G += S.T @ ((Wg.T @ Wg) * A[np.ix_(g, g)]) @ S
        resid = B[g] - A[np.ix_(g, phi)] @ Wp.T          # F_g × out
        c += S.T @ (resid * Wg.T).sum(1)
        rr += yy - 2 * float((Wp.T * B[phi]).sum()) + float(np.einsum("of,fh,oh->", Wp, A[np.ix_(phi, phi)], Wp))
    return G, c, rr


def loss(G, c, rr, idx, gamma) -> float:
    idx = np.asarray(idx, dtype=np.int64)
    g = np.asarray(gamma, np.float64)
    return float(rr - 2 * g @ c[idx] + g @ G[np.ix_(idx, idx)] @ g)


def ridge_refit(st: Stats, keep_features: np.ndarray, ridge: float, fixed_bias: np.ndarray | None = None,
                prior: np.ndarray | None = None, blocks: list[tuple[np.ndarray, np.ndarray]] | None = None):
    """Least-squares re-fit of a consumer's whole weight on its kept features (ridge-regularised,
    λ = ridge × mean diagonal of the kept inputs' second moment) and of its bias, unless the bias is
    fixed. The ridge pulls the weights towards `prior` (out × (F+1), e.g. the current weights: a
    strong ridge then changes little where data is scarce) or towards 0 without one.
    `blocks` (grouped convolutions): (output rows, features they may read) pairs; each block is
    fitted on its own features only, so the weight keeps the op's block structure.
    `ridge = inf` is the limit: the kept weights stay the prior's and only the bias is re-fitted (the
    least-squares bias correction: it absorbs the mean of what the removed and changed inputs gave).
    Returns W̃' = [W', b'] (out × (F+1)) with zeros on removed features."""
    A, B, _ = st.numpy()
    if np.isinf(ridge):
        return _bias_only(A, B, np.asarray(keep_features, bool), fixed_bias, prior)
    w = np.zeros((B.shape[1], A.shape[0]))
    for rows, feats in blocks or [(np.arange(B.shape[1]), np.ones(A.shape[0] - 1, dtype=bool))]:
        w[rows] = _ridge_block(A, B[:, rows], np.asarray(keep_features, bool) & feats, ridge,
                               None if fixed_bias is None else fixed_bias[rows],
                               None if prior is None else prior[rows])
    return w


def scale_refit(st: Stats, keep_features: np.ndarray, prior: np.ndarray, fixed_bias: np.ndarray | None = None,
                ridge: float = 1e-6) -> np.ndarray:
    """The prior of the full re-fit of a consumer with fewer rows than inputs: the prior's weights on the kept
    features, each input column scaled by one least-squares factor g_j, and the bias (unless fixed) fitted with them.
    F + out parameters instead of out × (F + 1): W' = W_prior · diag(g). With the bias free, the moments are
    centred first (the bias then absorbs the means); the normal equations of g are
    (A_kk ∘ W_kᵀW_k) g = diag(W_kᵀ B_k), a ridge of `ridge` × their mean diagonal pulling g towards 1.
    Returns W̃' = [W', b'] (out × (F+1)) with zeros on removed features."""
    A, B, _ = st.numpy()
    nf = A.shape[0] - 1
    k = np.flatnonzero(np.asarray(keep_features, bool))
    W = prior[:, k]
    Akk, Bk = A[np.ix_(k, k)], B[k]
    n = A[nf, nf]
    if fixed_bias is None and n > 0:
        Akk = Akk - np.outer(A[nf, k], A[nf, k]) / n
        Bk = Bk - np.outer(A[nf, k], B[nf]) / n
    elif fixed_bias is not None:
        Bk = Bk - np.outer(A[k, nf], fixed_bias)
    G = Akk * (W.T @ W)
    c = np.einsum("fo,of->f", Bk, W)
    reg = ridge * float(np.diag(G).mean()) if len(k) else 0.0
    g = np.linalg.lstsq(G + reg * np.eye(len(k)), c + reg, rcond=None)[0] if len(k) else np.zeros(0)
    w = np.zeros((B.shape[1], nf + 1))
    w[:, k] = W * g
    if fixed_bias is not None:
        w[:, nf] = fixed_bias
    elif n > 0:
        w[:, nf] = (B[nf] - w[:, :nf] @ A[nf, :nf]) / n
    else:
        w[:, nf] = prior[:, nf]
    return w


def _bias_only(A, B, keep_features, fixed_bias, prior) -> np.ndarray:
    """The prior's weights on the kept features (zeros without a prior) and the least-squares bias given them:
    b = (Σy − W Σx) / rows, from the bias row of A and B."""
    nf = A.shape[0] - 1
    w = np.zeros((B.shape[1], nf + 1))
    if prior is not None:
        w[:, :nf] = prior[:, :nf] * keep_features
    if fixed_bias is not None:
        w[:, nf] = fixed_bias
    elif A[nf, nf] > 0:
        w[:, nf] = (B[nf] - w[:, :nf] @ A[nf, :nf]) / A[nf, nf]
    elif prior is not None:
        w[:, nf] = prior[:, nf]
    return w


def _ridge_block(A, B, keep_features, ridge, fixed_bias, prior) -> np.ndarray:
    """`ridge_refit` of the outputs whose cross terms are the columns of B."""
    nf = A.shape[0] - 1
    k = np.flatnonzero(keep_features)
    if fixed_bias is None:
        k = np.append(k, nf)
        target = B[k]
    else:
        target = B[k] - np.outer(A[k, nf], fixed_bias)
    Akk = torch.from_numpy(np.ascontiguousarray(A[np.ix_(k, k)]))
    free = k < nf
    reg = ridge * float(torch.diagonal(Akk)[torch.from_numpy(free)].mean()) if free.any() else 0.0
    eye = torch.diag(torch.from_numpy(free.astype(np.float64)))
    if prior is not None and reg:
        target = target + reg * free[:, None] * prior[:, k].T
    lhs, rhs = Akk + reg * eye, torch.from_numpy(np.ascontiguousarray(target))
    # with a ridge the system is positive definite (the bias row holds the row count): a Cholesky solve
    # is ~10x cheaper than the SVD solver, which remains for the unregularised or degenerate cases
    chol, info = torch.linalg.cholesky_ex(lhs) if reg > 0 else (None, 1)
    if chol is not None and int(info) == 0:
        sol = torch.cholesky_solve(rhs, chol).numpy()
    else:
        sol = torch.linalg.lstsq(lhs, rhs, driver="gelsd").solution.numpy()  # |K| × out
    w = np.zeros((B.shape[1], nf + 1))
    w[:, k] = sol.T
    if fixed_bias is not None:
        w[:, nf] = fixed_bias
    return w


def refit_curve(st: Stats, member: np.ndarray, order: list[int], ridge: float = 1e-6) -> np.ndarray:
    """Loss of a full re-fit of the consumer (bias and inputs outside the group always kept) when it
    keeps the group's channels `order[:n]`, for n = 0..len(order): one Cholesky factor of A in that
    order, since the residual of a least-squares fit on the first m features is yy − Σ_{i<m} ‖(L⁻¹B)_i‖².
    `member` is the group channel index of every feature or -1."""
    A, B, yy = st.numpy()
    mem = np.append(member, -1)
    pieces = [np.flatnonzero(mem < 0)] + [np.flatnonzero(mem == ch) for ch in order]
    perm = np.concatenate(pieces)
    Ap = A[np.ix_(perm, perm)]
    reg = ridge * float(np.diag(Ap).mean())
    L = torch.linalg.cholesky(torch.from_numpy(Ap + reg * np.eye(len(perm))))
    Z = torch.linalg.solve_triangular(L, torch.from_numpy(np.ascontiguousarray(B[perm])), upper=False)
    explained = np.concatenate([[0.0], np.cumsum((Z * Z).sum(1).numpy())])
    ends = np.cumsum([len(p) for p in pieces])
    return np.maximum(yy - explained[ends], 0.0)


def conditioned(st: Stats, member: np.ndarray, alive: np.ndarray, ridge: float = 1e-9):
    """A consumer's statistics restricted to the group's features after fitting everything else it keeps
    (its other live features and the bias) by least squares: A' = A_gg − A_gb A_bb⁻¹ A_bg, B' likewise,
    and yy' the residual with the group removed. Returns (A', B', yy', channel of every group feature)."""
    A, B, yy = st.numpy()
    mem = np.append(member, -1)
    live = np.append(alive, True)
    g = np.flatnonzero(mem >= 0)
    b = np.flatnonzero((mem < 0) & live)
    Abb = A[np.ix_(b, b)]
    Abb = Abb + ridge * float(np.diag(Abb).mean()) * np.eye(len(b))
    L = torch.linalg.cholesky(torch.from_numpy(Abb))
    Pg = torch.linalg.solve_triangular(L, torch.from_numpy(np.ascontiguousarray(A[np.ix_(b, g)])), upper=False)
    Pb = torch.linalg.solve_triangular(L, torch.from_numpy(np.ascontiguousarray(B[b])), upper=False)
    Ag = A[np.ix_(g, g)] - (Pg.T @ Pg).numpy()
    Bg = B[g] - (Pg.T @ Pb).numpy()
    return Ag, Bg, max(yy - float((Pb * Pb).sum()), 0.0), mem[g]
