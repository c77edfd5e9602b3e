"""The consumers of a channel group as linear maps over features (for statistics and re-fits).

Each consumer (Conv, Gemm, MatMul reading a group) is seen as a linear map over *features*: for a
Conv the entries of its input patches (channel-major, as `torch.nn.functional.unfold` lays them),
for Gemm/MatMul its input features (after Flatten each channel is H·W features).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..analysis import Analysis, Group


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
                rows = slice(q * per, (q + 1) * per)
                dense[rows, q * cin_g:(q + 1) * cin_g] = w[rows].reshape(per, cin_g, k)
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

    def features(self, x: np.ndarray, y: np.ndarray | None, first: int, max_positions: int | None, seed: int,
                 y_rows: torch.Tensor | None = None):
        """Rows of features and outputs at sampled positions; sampling depends on the sample index
        only (not on batching). Only the sampled patches are cut out (in the data's precision) and
        widened to float64, so memory follows the rows kept, not the activation. `y_rows` instead of `y`:
        the output rows already sampled (`output_rows`, e.g. from an `OutputCache`)."""
        xt = torch.from_numpy(np.asarray(x))
        yt = None if y is None else torch.from_numpy(np.asarray(y))
        n = xt.shape[0]
        rows_y = None
        if self.op == "Conv":
            if xt.ndim != 4:
                raise NotSupported(f"{self.name}: only 2-D convolutions have statistics")
            c = self.conv
            pads = c["pads"]
            if any(pads):
                xt = F.pad(xt, (pads[1], pads[3], pads[0], pads[2]))
            (kh, kw), (sh, sw), (dh, dw) = c["kernel"], c["strides"], c["dilations"]
            hout = (xt.shape[2] - dh * (kh - 1) - 1) // sh + 1
            wout = (xt.shape[3] - dw * (kw - 1) - 1) // sw + 1
            if yt is not None:
                rows_y = yt.reshape(n, yt.shape[1], -1).transpose(1, 2)  # N, L, out
            n_pos = hout * wout
        else:
            rows_x = xt.reshape(n, -1, xt.shape[-1])
            if yt is not None:
                rows_y = yt.reshape(n, -1, yt.shape[-1])
            n_pos = rows_x.shape[1]
        if rows_y is not None and rows_y.shape[1] != n_pos:
            raise NotSupported(f"{self.name}: input patches do not match output positions")
        idx = self._positions(n, n_pos, first, max_positions, seed)
        if idx is not None and rows_y is not None:
            rows_y = torch.gather(rows_y, 1, idx[..., None].expand(-1, -1, rows_y.shape[2]))
        if self.op == "Conv":
            pos = idx if idx is not None else torch.arange(n_pos).expand(n, -1)
            ih = (pos // wout * sh)[..., None, None] + (torch.arange(kh) * dh)[:, None]   # N, P, kh, 1
            iw = (pos % wout * sw)[..., None, None] + (torch.arange(kw) * dw)[None, :]    # N, P, 1, kw
            patches = xt[torch.arange(n)[:, None, None, None], :, ih, iw]                # N, P, kh, kw, C
            rows_x = patches.permute(0, 1, 4, 2, 3).reshape(n, pos.shape[1], -1)        # unfold's order
        elif idx is not None:
            rows_x = torch.gather(rows_x, 1, idx[..., None].expand(-1, -1, rows_x.shape[2]))
        xs = rows_x.reshape(-1, rows_x.shape[-1]).to(torch.float64)
        if rows_y is not None:
            return xs, rows_y.reshape(-1, rows_y.shape[-1]).to(torch.float64)
        if y_rows is None or len(y_rows) != len(xs):
            raise NotSupported(f"{self.name}: input patches do not match output positions")
        return xs, y_rows.to(torch.float64)

    def output_rows(self, y: np.ndarray, first: int, max_positions: int | None, seed: int) -> torch.Tensor:
        """The output rows `features` pairs with its feature rows (same sampled positions), in y's precision."""
        yt = torch.from_numpy(np.asarray(y))
        n = yt.shape[0]
        rows_y = yt.reshape(n, yt.shape[1], -1).transpose(1, 2) if self.op == "Conv" else \
            yt.reshape(n, -1, yt.shape[-1])
        idx = self._positions(n, rows_y.shape[1], first, max_positions, seed)
        if idx is not None:
            rows_y = torch.gather(rows_y, 1, idx[..., None].expand(-1, -1, rows_y.shape[2]))
        return rows_y.reshape(-1, rows_y.shape[-1])

    def sampled_positions(self, n_pos: int, max_positions: int | None) -> int:
        return min(n_pos, max_positions) if max_positions else n_pos

    def _positions(self, n: int, n_pos: int, first: int, max_positions: int | None, seed: int):
        if not (max_positions and n_pos > max_positions):
            return None
        return torch.from_numpy(np.stack([
            np.random.default_rng((seed, first + i, self.node)).choice(n_pos, max_positions, replace=False)
            for i in range(n)]))


def consumers_of(analysis: Analysis, group: Group) -> list[Consumer]:
    """Every Conv/Gemm/MatMul reading the group; NotSupported if one cannot be modelled."""
    roots = analysis.class_of
    classes = set(group.classes.tolist())
    out = []
    for e in analysis.edits:
        if e.kind not in ("consumer", "grouped_consumer") or not classes & set(roots[e.labels].tolist()):
            continue
        node = analysis.graph.nodes[e.node]
        conv = {}
        labels = e.labels
        if node.op == "Conv":
            w = node.inputs[1].values
            if w.ndim != 4:
                raise NotSupported(f"Conv '{node.name}' is not 2-D")
            if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
                raise NotSupported(f"Conv '{node.name}' uses auto_pad {node.attrs['auto_pad']}")
            conv = dict(kernel=tuple(w.shape[2:]), pads=list(node.attrs.get("pads", [0, 0, 0, 0])),
                        strides=tuple(node.attrs.get("strides", [1, 1])),
                        dilations=tuple(node.attrs.get("dilations", [1, 1])), group=int(node.attrs.get("group", 1)))
            labels = np.repeat(e.labels, int(np.prod(w.shape[2:])))
        elif node.op not in ("Gemm", "MatMul"):
            raise NotSupported(f"{node.op} '{node.name}' has no statistics")
        out.append(Consumer(e.node, node.name, node.op, node.inputs[0].name, node.outputs[0].name, e.input,
                            labels, conv))
    if not out:
        raise NotSupported("no consumer with statistics")
    return out


def bias_index(consumer: Consumer, analysis: Analysis) -> int | None:
    """Input index where a re-fitted bias goes, or None when the op cannot take one there."""
    node = analysis.graph.nodes[consumer.node]
    if consumer.op == "MatMul":
        return None
    if consumer.op == "Gemm" and float(node.attrs.get("beta", 1.0)) == 0.0:
        return None
    if consumer.op == "Gemm" and len(node.inputs) > 2 and not node.inputs[2].is_empty():
        c = np.asarray(node.inputs[2].values)
        out = node.inputs[1].values.shape[0 if node.attrs.get("transB", 0) else 1]
        if c.ndim == 0 or c.shape[-1] != out or c.size != out:
            return None
    return 2


def original_dense(consumer: Consumer, analysis: Analysis) -> np.ndarray:
    """W̃ = [W, b] over features, from the original weights."""
    node = analysis.graph.nodes[consumer.node]
    w = np.asarray(node.inputs[consumer.weight_input].values)
    bias = None
    if consumer.op in ("Conv", "Gemm") and len(node.inputs) > 2 and not node.inputs[2].is_empty():
        bias = np.asarray(node.inputs[2].values)
    dense, b = consumer.dense(w, bias, node.attrs)
    return np.concatenate([dense, b[:, None]], 1)


def to_onnx(consumer: Consumer, analysis: Analysis, wt: np.ndarray) -> dict[int, np.ndarray]:
    """Inverse of `Consumer.dense`: ONNX-shaped weight (and bias) for a re-fitted W̃."""
    node = analysis.graph.nodes[consumer.node]
    w0 = np.asarray(node.inputs[consumer.weight_input].values)
    dense, b = wt[:, :-1], wt[:, -1]
    if consumer.op == "Conv":
        group = int(node.attrs.get("group", 1))
        cout, cin_g = w0.shape[0], w0.shape[1]
        k = int(np.prod(w0.shape[2:]))
        full = dense.reshape(cout, cin_g * group, k)
        per = cout // group
        w = np.concatenate([full[q * per:(q + 1) * per, q * cin_g:(q + 1) * cin_g] for q in range(group)], 0)
        w = w.reshape(w0.shape)
    elif consumer.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        w = (dense / alpha) if node.attrs.get("transB", 0) else (dense / alpha).T
        beta = float(node.attrs.get("beta", 1.0))
        b = b / beta
    else:
        w = dense.T
    out = {consumer.weight_input: w.astype(w0.dtype)}
    idx = bias_index(consumer, analysis)
    if idx is not None:
        shape = node.inputs[2].values.shape if len(node.inputs) > 2 and not node.inputs[2].is_empty() else b.shape
        out[idx] = b.reshape(shape).astype(w0.dtype)
    return out
