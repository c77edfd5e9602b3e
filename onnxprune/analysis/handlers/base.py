"""Small helpers shared by the handlers."""
from __future__ import annotations

import numpy as np


def known_size(shape, rank: int) -> int | None:
    """The element count of a weight of `shape` (the MACs per output position of a frozen layer whose weight is
    computed at run time), when it has `rank` dimensions, all known; else None."""
    if shape is None or len(shape) != rank or any(d is None for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))


def labeled_axes(lab: np.ndarray) -> list[int]:
    return [i for i, d in enumerate(lab.shape) if d > 1]


def axis_labels(lab: np.ndarray, axis: int, size: int) -> np.ndarray | None:
    """The 1-D channel labels of `lab` along `axis`, if that is its only channel axis and has `size`."""
    axis = axis % lab.ndim
    others = [d for i, d in enumerate(lab.shape) if i != axis]
    if any(d != 1 for d in others):
        return None
    vec = lab.reshape(-1)
    if len(vec) == size:
        return vec
    if len(vec) == 1:  # a single channel broadcast along the axis: every position is that channel
        return np.repeat(vec, size)
    return None


def single(lab: np.ndarray) -> bool:
    """A layout of one channel (every axis of size 1): its channel axis cannot be told from the layout."""
    return lab.size == 1


def on_axis(vec: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A 1-D label vector laid along `axis` of a rank-`rank` layout."""
    shape = [1] * rank
    shape[axis] = len(vec)
    return vec.reshape(shape)


def attr(node, name, default=None):
    return node.attrs.get(name, default)


def opset(ctx) -> int:
    for imp in ctx.model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def input_or_attr(node, ctx, index: int, name: str):
    """An operand given as an attribute in old opsets and a constant input in new ones.

    Returns (value or None, ok): ok is False when it is a run-time tensor."""
    if name in node.attrs:
        return np.asarray(node.attrs[name]), True
    if len(node.inputs) > index and not node.inputs[index].is_empty():
        val = ctx.const(node.inputs[index])
        return val, val is not None
    return None, True


def kept_count(rw, labels: np.ndarray) -> int:
    return int(rw.keep_mask(labels).sum())
