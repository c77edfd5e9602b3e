"""The consumers of a channel group as linear maps over features (for statistics and re-fits)."""
from __future__ import annotations

import numpy as np

from .analysis import Analysis, Group
from .statistics import Consumer, NotSupported


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
