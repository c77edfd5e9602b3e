"""Sufficient statistics of consumers, accumulated batch by batch (DESIGN.md, "Greedy selection").

Each consumer (Conv, Gemm, MatMul reading a group) is seen as a linear map over *features*: for a
Conv the entries of its input patches (channel-major, as `torch.nn.functional.unfold` lays them),
for Gemm/MatMul its input features (after Flatten each channel is H·W features). Per consumer we
accumulate, over sampled output positions, with a constant feature appended for the bias:

    A = X̃ᵀX̃   (F+1)×(F+1)        B = X̃ᵀY   (F+1)×out        yy = Σ‖Y‖²

where X are the inputs in the network pruned so far and Y the original network's outputs. The Gram
matrix G and cross term c of a group, the loss of any (S, γ), and the ridge refit of a consumer's
whole weight all follow from these, so memory is bounded by F², never by the data set.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


class NotSupported(Exception):
    """A consumer whose statistics onnxprune cannot compute (the group falls back to magnitude)."""


@dataclass
class Consumer:
    node: int                  # index in the analysis graph
    name: str
    op: str
    input: str                 # tensor read (in the network pruned so far)
    output: str                # tensor written (in the original network)
    weight_input: int
    labels: np.ndarray         # channel label (atom) of every feature
    conv: dict = field(default_factory=dict)

    def dense(self, w: np.ndarray, bias: np.ndarray | None, attrs: dict) -> tuple[np.ndarray, np.ndarray]:
        """Weight as (out × F) over features, and the bias (out)."""
        if self.op == "Conv":
            group = int(attrs.get("group", 1))
            cout, cin_g = w.shape[0], w.shape[1]
            k = int(np.prod(w.shape[2:]))
            dense = np.zeros((cout, cin_g * group, k), dtype=np.float64)
            per = cout // group
            for q in range(group):
                dense[q * per:(q + 1) * per, q * cin_g:(q + 1) * cin_g] = w[q * per:(q + 1) * per].reshape(per, cin_g, k)
            dense = dense.reshape(cout, -1)
        elif self.op == "Gemm":
            b = w.T if attrs.get("transB", 0) else w
            dense = float(attrs.get("alpha", 1.0)) * b.T
        else:  # MatMul
            dense = w.T
        out = dense.shape[0]
        if bias is None:
            bvec = np.zeros(out)
        else:
            bvec = np.broadcast_to(np.asarray(bias, np.float64).reshape(-1) if bias.size == out else bias, (out,))
            if self.op == "Gemm":
                bvec = bvec * float(attrs.get("beta", 1.0))
        return np.asarray(dense, np.float64), np.asarray(bvec, np.float64)

    def blocks(self, n_out: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """For a grouped Conv: (output rows, features they read) per group; None for a dense op."""
        group = int(self.conv.get("group", 1))
        if group == 1:
            return None
        n_feat = len(self.labels)
        reads = np.arange(n_feat) * group // n_feat          # features are channel-major, groups contiguous
        per = n_out // group
        return [(np.arange(q * per, (q + 1) * per), reads == q) for q in range(group)]

    def features(self, x: np.ndarray, y: np.ndarray, first: int, max_positions: int | None, seed: int):
        """Rows of features and outputs at sampled positions; sampling depends on the sample index
        only (not on batching). Only the sampled patches are cut out (in the data's precision) and
        widened to float64, so memory follows the rows kept, not the activation."""
        xt, yt = torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(y))
        n = xt.shape[0]
        if self.op == "Conv":
            if xt.ndim != 4:
                raise NotSupported(f"{self.name}: only 2-D convolutions have statistics")
            c = self.conv
            pads = c["pads"]
            xt = F.pad(xt, (pads[1], pads[3], pads[0], pads[2]))
            (kh, kw), (sh, sw), (dh, dw) = c["kernel"], c["strides"], c["dilations"]
            hout = (xt.shape[2] - dh * (kh - 1) - 1) // sh + 1
            wout = (xt.shape[3] - dw * (kw - 1) - 1) // sw + 1
            rows_y = yt.reshape(n, yt.shape[1], -1).transpose(1, 2)  # N, L, out
            n_pos = hout * wout
        else:
            rows_x = xt.reshape(n, -1, xt.shape[-1])
            rows_y = yt.reshape(n, -1, yt.shape[-1])
            n_pos = rows_x.shape[1]
        if rows_y.shape[1] != n_pos:
            raise NotSupported(f"{self.name}: input patches do not match output positions")
        idx = None
        if max_positions and n_pos > max_positions:
            idx = torch.from_numpy(np.stack([
                np.random.default_rng((seed, first + i, self.node)).choice(n_pos, max_positions, replace=False)
                for i in range(n)]))
            rows_y = torch.gather(rows_y, 1, idx[..., None].expand(-1, -1, rows_y.shape[2]))
        if self.op == "Conv":
            pos = idx if idx is not None else torch.arange(n_pos).expand(n, -1)
            ih = (pos // wout * sh)[..., None, None] + (torch.arange(kh) * dh)[:, None]   # N, P, kh, 1
            iw = (pos % wout * sw)[..., None, None] + (torch.arange(kw) * dw)[None, :]    # N, P, 1, kw
            patches = xt[torch.arange(n)[:, None, None, None], :, ih, iw]                # N, P, kh, kw, C
            rows_x = patches.permute(0, 1, 4, 2, 3).reshape(n, pos.shape[1], -1)        # unfold's order
        elif idx is not None:
            rows_x = torch.gather(rows_x, 1, idx[..., None].expand(-1, -1, rows_x.shape[2]))
        return (rows_x.reshape(-1, rows_x.shape[-1]).to(torch.float64),
                rows_y.reshape(-1, rows_y.shape[-1]).to(torch.float64))


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
        self.yy += float((y * y).sum())
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
    Returns W̃' = [W', b'] (out × (F+1)) with zeros on removed features."""
    A, B, _ = st.numpy()
    w = np.zeros((B.shape[1], A.shape[0]))
    for rows, feats in blocks or [(np.arange(B.shape[1]), np.ones(A.shape[0] - 1, dtype=bool))]:
        w[rows] = _ridge_block(A, B[:, rows], np.asarray(keep_features, bool) & feats, ridge,
                               None if fixed_bias is None else fixed_bias[rows],
                               None if prior is None else prior[rows])
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
    sol = torch.linalg.lstsq(Akk + reg * eye, torch.from_numpy(np.ascontiguousarray(target)),
                             driver="gelsd").solution.numpy()  # |K| × out
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
