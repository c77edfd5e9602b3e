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
    # a MatMul whose only reader is Add(·, constant bias): (Add node index, bias input index); `output` is
    # then the Add's output and the bias is the consumer's (re-fitted with its weight)
    bias_add: tuple[int, int] | None = None
    # the other operand of the residual Add that `output` reaches, alone or through per-channel affine ops
    # (BatchNormalization, Mul/Add of constants): the sequential pass imitates the sum, not the consumer alone
    # (docs/DESIGN.md, "Residual targets"); None otherwise
    residual: str | None = None
    # the channel label (atom) of every output feature, when the consumer's outputs are a group's channels
    out_labels: np.ndarray | None = None
    # the affine chain's scale per output channel (one value: the same for all), None when there is none
    residual_scale: np.ndarray | None = None

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
                 tokens: np.ndarray | None = None, outputs: tuple[torch.Tensor, int | None] | None = None):
        """Rows of features and outputs at sampled positions; sampling depends on the sample index
        only (not on batching). Only the sampled patches are cut out (in the data's precision) and
        widened to float64, so memory follows the rows kept, not the activation.

        `tokens` ([N, S], nonzero for real tokens; docs/DESIGN.md, "Statistics"): a Gemm/MatMul input of
        shape [N, S, F] has one row per token; rows of padding tokens are dropped before sampling.
        `outputs`: `output_rows(y, ...)` computed before (then `y` is not needed; positions None: rows read
        back from an `OutputCache`, checked by their count)."""
        if outputs is None:
            if y is None:
                raise ValueError("features needs the outputs y or their rows")
            outputs = self.output_rows(y, first, max_positions, seed, tokens)
        rows_y, n_pos = outputs
        rows_x, x_pos = self._input_rows(torch.from_numpy(np.asarray(x)), first, max_positions, seed, tokens)
        if (n_pos is not None and x_pos != n_pos) or rows_x.shape[0] != rows_y.shape[0]:
            raise NotSupported(f"{self.name}: input patches do not match output positions")
        return rows_x.to(torch.float64), rows_y.to(torch.float64)

    def sampled_positions(self, n_pos: int, max_positions: int | None) -> int:
        """Rows per sample `features` keeps of `n_pos` positions (without a token mask)."""
        return min(n_pos, max_positions) if max_positions else n_pos

    def _tokens(self, t: torch.Tensor, tokens) -> np.ndarray | None:
        """Which rows are real tokens, when `t` ([N, S, ·]) has one row per token of `tokens`."""
        if tokens is None or self.op == "Conv" or t.ndim != 3 or tuple(tokens.shape) != tuple(t.shape[:2]):
            return None
        return np.asarray(tokens) != 0

    def _sample(self, n: int, n_pos: int, first: int, max_positions: int | None, seed: int):
        if not max_positions or n_pos <= max_positions:
            return None
        return torch.from_numpy(np.stack([
            np.random.default_rng((seed, first + i, self.node)).choice(n_pos, max_positions, replace=False)
            for i in range(n)]))

    def _token_picks(self, real: np.ndarray, first: int, max_positions: int | None, seed: int) -> torch.Tensor:
        """Flat row indices of the real tokens, at most `max_positions` per sample drawn among them."""
        n, s = real.shape
        picks = []
        for i in range(n):
            where = np.flatnonzero(real[i])
            if max_positions and len(where) > max_positions:
                where = np.sort(np.random.default_rng((seed, first + i, self.node)).choice(
                    where, max_positions, replace=False))
            picks.append(i * s + where)
        return torch.from_numpy(np.concatenate(picks).astype(np.int64))

    def output_rows(self, y: np.ndarray, first: int, max_positions: int | None, seed: int,
                    tokens: np.ndarray | None = None) -> tuple[torch.Tensor, int]:
        """The output rows `features` pairs with its input rows (in the output's precision), and the number
        of positions per sample they were drawn from (-1 for tokens)."""
        yt = torch.from_numpy(np.asarray(y))
        n = yt.shape[0]
        real = self._tokens(yt, tokens)
        if real is not None:
            return yt.reshape(n * yt.shape[1], -1)[self._token_picks(real, first, max_positions, seed)], -1
        rows = yt.reshape(n, yt.shape[1], -1).transpose(1, 2) if self.op == "Conv" else yt.reshape(n, -1, yt.shape[-1])
        idx = self._sample(n, rows.shape[1], first, max_positions, seed)
        n_pos = rows.shape[1]
        if idx is not None:
            rows = torch.gather(rows, 1, idx[..., None].expand(-1, -1, rows.shape[2]))
        return rows.reshape(-1, rows.shape[-1]), n_pos

    def _input_rows(self, xt: torch.Tensor, first: int, max_positions: int | None, seed: int, tokens):
        n = xt.shape[0]
        real = self._tokens(xt, tokens)
        if real is not None:
            return xt.reshape(n * xt.shape[1], -1)[self._token_picks(real, first, max_positions, seed)], -1
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
            n_pos = hout * wout
            idx = self._sample(n, n_pos, first, max_positions, seed)
            pos = idx if idx is not None else torch.arange(n_pos).expand(n, -1)
            ih = (pos // wout * sh)[..., None, None] + (torch.arange(kh) * dh)[:, None]   # N, P, kh, 1
            iw = (pos % wout * sw)[..., None, None] + (torch.arange(kw) * dw)[None, :]    # N, P, 1, kw
            patches = xt[torch.arange(n)[:, None, None, None], :, ih, iw]                # N, P, kh, kw, C
            rows = patches.permute(0, 1, 4, 2, 3).reshape(n, pos.shape[1], -1)          # unfold's order
            return rows.reshape(-1, rows.shape[-1]), n_pos
        rows = xt.reshape(n, -1, xt.shape[-1])
        n_pos = rows.shape[1]
        idx = self._sample(n, n_pos, first, max_positions, seed)
        if idx is not None:
            rows = torch.gather(rows, 1, idx[..., None].expand(-1, -1, rows.shape[2]))
        return rows.reshape(-1, rows.shape[-1]), n_pos


def consumers_of(analysis: Analysis, group: Group) -> list[Consumer]:
    """Every Conv/Gemm/MatMul reading the group; NotSupported if one cannot be modelled."""
    roots = analysis.class_of
    classes = set(group.classes.tolist())
    # (node, weight input) -> the channel labels of that weight's outputs (the consumer's output channels)
    produced = {(p.node, p.input): p.labels for p in analysis.edits if p.kind == "producer"}
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
        bias_add = linear_bias_add(analysis, node) if node.op == "MatMul" else None
        output = node.outputs[0] if bias_add is None else analysis.graph.nodes[bias_add[0]].outputs[0]
        residual = _residual(analysis, output, 1 if node.op == "Conv" else -1)
        out.append(Consumer(e.node, node.name, node.op, node.inputs[0].name, output.name, e.input, labels, conv,
                            bias_add, residual[0] if residual else None, produced.get((e.node, e.input)),
                            residual[1] if residual else None))
    if not out:
        raise NotSupported("no consumer with statistics")
    return out


def linear_bias_add(analysis: Analysis, node) -> tuple[int, int] | None:
    """(Add node index, bias input index) when the MatMul's only reader adds a constant vector over its
    output features (an exported Linear layer: MatMul then Add(bias), either operand order)."""
    out = node.outputs[0]
    if len(out.outputs) != 1 or out.name in {t.name for t in analysis.graph.outputs}:
        return None
    add = out.outputs[0]
    if add.op != "Add" or len(add.inputs) != 2:
        return None
    i = 1 if add.inputs[0] is out else 0
    if add.inputs[1 - i] is not out:
        return None
    bias = analysis.const(add.inputs[i])
    n = np.asarray(node.inputs[1].values).shape[-1]
    shape = analysis.shape(out)
    if bias is None or bias.size != n or bias.shape[-1] != n or (shape is not None and bias.ndim > len(shape)) \
            or not np.issubdtype(bias.dtype, np.floating):
        return None
    return analysis.index[id(add)], i


def _channel_vector(value: np.ndarray, shape: tuple, axis: int) -> np.ndarray | None:
    """A constant that broadcasts over a tensor of `shape` as one value per channel (along `axis`), as that
    vector (a scalar gives one value for all); None when it varies along any other axis or widens the shape."""
    raw = np.asarray(value)
    if raw.ndim > len(shape) or not np.issubdtype(raw.dtype, np.floating):
        return None
    dims: tuple[int, ...] = (1,) * (len(shape) - raw.ndim) + tuple(raw.shape)
    if any(d != 1 for i, d in enumerate(dims) if i != axis % len(shape)):
        return None
    return raw.astype(np.float64).reshape(-1)


def _channel_scale(analysis: Analysis, node, t, shape: tuple, axis: int) -> np.ndarray | None:
    """The scale a per channel when `node` maps its input `t` to a·t + b channel by channel with constants
    (inference BatchNormalization, Mul or Add of a constant, Identity), else None."""
    if node.op == "Identity":
        return np.ones(1)
    if node.op == "BatchNormalization" and node.inputs[0] is t and len(node.outputs) == 1 and len(node.inputs) == 5 \
            and not node.attrs.get("training_mode", 0) and axis % len(shape) == 1:
        vals = [analysis.const(x) for x in node.inputs[1:]]   # scale, bias, mean, var: all constants
        if any(v is None for v in vals):
            return None
        gamma, var = (np.asarray(vals[i], np.float64).reshape(-1) for i in (0, 3))
        return gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    if node.op in ("Mul", "Add") and len(node.inputs) == 2:
        other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
        value = analysis.const(other)
        vec = None if value is None or other is t else _channel_vector(value, shape, axis)
        if vec is None:
            return None
        return vec if node.op == "Mul" else np.ones(1)
    return None


def _residual(analysis: Analysis, out, axis: int) -> tuple[str, np.ndarray | None] | None:
    """The other operand of the residual Add `out` reaches through per-channel affine ops (`_channel_scale`,
    each the only reader of its input), when it is a computed tensor of `out`'s shape: (its name, the chain's
    scale per channel along `axis`, or None when there is no scaling), else None."""
    found = _residual_add(analysis, out, axis)
    return None if found is None else (found[1].name, found[2])


def residual_sum(analysis: Analysis, out, axis: int) -> tuple[str, np.ndarray | None] | None:
    """The output of the residual Add that `out` reaches as `_residual` finds it, and the chain's scale
    (None: none), or None when `out` reaches no residual Add."""
    found = _residual_add(analysis, out, axis)
    return None if found is None else (found[0].outputs[0].name, found[2])


def _residual_add(analysis: Analysis, out, axis: int):
    """(the residual Add, its other operand, the chain's scale or None) for `_residual`, or None."""
    shape = analysis.shape(out)
    if shape is None:
        return None
    graph_outputs = {t.name for t in analysis.graph.outputs}
    scale = np.ones(1)
    t = out
    for _ in range(8):
        if len(t.outputs) != 1 or t.name in graph_outputs:
            return None
        node = t.outputs[0]
        if node.op == "Add" and len(node.inputs) == 2 and node.inputs[0] is not node.inputs[1]:
            other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
            if analysis.const(other) is None:
                b = analysis.shape(other)
                if b is None or len(b) != len(shape) or any(x is not None and y is not None and x != y
                                                            for x, y in zip(shape, b)):
                    return None
                return node, other, (None if np.all(scale == 1.0) else scale)
        step = _channel_scale(analysis, node, t, shape, axis)
        if step is None or len(node.outputs) != 1:
            return None
        scale = scale * step
        t = node.outputs[0]
    return None


def _bias_values(consumer: Consumer, analysis: Analysis) -> np.ndarray | None:
    """The consumer's current constant bias (its own input or its Add's), or None."""
    if consumer.bias_add is not None:
        add, i = consumer.bias_add
        return np.asarray(analysis.graph.nodes[add].inputs[i].values)
    node = analysis.graph.nodes[consumer.node]
    if consumer.op in ("Conv", "Gemm") and len(node.inputs) > 2 and not node.inputs[2].is_empty():
        return np.asarray(node.inputs[2].values)
    return None


def bias_index(consumer: Consumer, analysis: Analysis) -> int | None:
    """Input index where a re-fitted bias goes (of the bias Add for a MatMul with one), or None when the op
    cannot take one there."""
    node = analysis.graph.nodes[consumer.node]
    if consumer.op == "MatMul":
        return None if consumer.bias_add is None else consumer.bias_add[1]
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
    dense, b = consumer.dense(w, _bias_values(consumer, analysis), node.attrs)
    return np.concatenate([dense, b[:, None]], 1)


def to_onnx(consumer: Consumer, analysis: Analysis, wt: np.ndarray) -> dict[int, dict[int, np.ndarray]]:
    """Inverse of `Consumer.dense`: ONNX-shaped weight (and bias), node index -> input index -> value (the
    bias of a MatMul goes to its Add)."""
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
    out = {consumer.node: {consumer.weight_input: w.astype(w0.dtype)}}
    idx = bias_index(consumer, analysis)
    if idx is not None:
        current = _bias_values(consumer, analysis)
        shape = current.shape if current is not None else b.shape
        where = consumer.node if consumer.bias_add is None else consumer.bias_add[0]
        out.setdefault(where, {})[idx] = b.reshape(shape).astype(w0.dtype)
    return out
