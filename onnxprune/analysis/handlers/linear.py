"""Gemm and MatMul with a constant weight: consumers of input features, producers of output features."""
from __future__ import annotations

import numpy as np

from . import handles
from .base import attr, axis_labels, on_axis


def _features(node, ctx, tensor, axis: int, size: int):
    lab = ctx.layout(tensor)
    if lab is None:
        return None, True
    vec = axis_labels(lab, axis, size)
    if vec is None:
        ctx.freeze(lab, node, f"channels are not on the feature axis of {node.op}")
        return None, False
    return vec, True


@handles("Gemm")
def gemm(node, ctx):
    b = ctx.const(node.inputs[1])
    if b is None or attr(node, "transA", 0):
        ctx.freeze_node(node, "Gemm with a run-time weight or transA is not supported")
        return
    trans_b = bool(attr(node, "transB", 0))
    k, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    vec, ok = _features(node, ctx, node.inputs[0], 1, k)
    if not ok:
        ctx.cost(node, k * n)
        return
    if vec is not None:
        ctx.edit("consumer", node, input=1, axis=1 if trans_b else 0, labels=vec)
    atoms = ctx.produce(node, n)
    ctx.edit("producer", node, input=1, axis=0 if trans_b else 1, labels=atoms)
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        c = ctx.const(node.inputs[2])
        if c is None:
            ctx.freeze(atoms, node, "bias computed at run time")
        elif c.ndim >= 1 and c.shape[-1] == n and n > 1:
            ctx.edit("param", node, input=2, axis=c.ndim - 1, labels=atoms)
    else:  # absent bias: a re-fit may add one of shape (N,)
        ctx.edit("param", node, input=2, axis=0, labels=atoms)
    ctx.cost(node, k * n, vec, atoms)
    ctx.set_layout(node.outputs[0], on_axis(atoms, 1, 2))


@handles("MatMul")
def matmul(node, ctx):
    a_t, b_t = node.inputs[0], node.inputs[1]
    b = ctx.const(b_t)
    a_shape = ctx.shape(a_t)
    if b is None or b.ndim != 2 or a_shape is None or len(a_shape) < 2:
        ctx.freeze_node(node, "MatMul without a 2-D constant right operand")
        a_size, out_size = ctx.cost_shape(a_t), ctx.cost_shape(node.outputs[0])
        known = out_size is not None and a_size is not None and all(d is not None for d in out_size[1:]) \
            and a_size[-1] is not None
        ctx.cost(node, int(np.prod(out_size[1:], dtype=np.int64)) * a_size[-1] if known else None)
        return
    k, n = b.shape
    rows = (ctx.cost_shape(a_t) or a_shape)[1:-1]
    macs = None if any(d is None for d in rows) else int(np.prod(rows, dtype=np.int64)) * k * n  # None: symbolic
    vec, ok = _features(node, ctx, a_t, len(a_shape) - 1, k)
    if not ok:
        ctx.cost(node, macs)
        return
    if vec is not None:
        ctx.edit("consumer", node, input=1, axis=0, labels=vec)
    atoms = ctx.produce(node, n)
    ctx.edit("producer", node, input=1, axis=1, labels=atoms)
    ctx.cost(node, macs, vec, atoms)
    ctx.set_layout(node.outputs[0], on_axis(atoms, len(a_shape) - 1, len(a_shape)))
