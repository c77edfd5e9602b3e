"""Gemm and MatMul with a constant weight: consumers of input features, producers of output features; MatMul of
two run-time tensors (attention products); Gather from a constant table (an embedding lookup: a producer)."""
from __future__ import annotations

import numpy as np

from . import handles
from .base import attr, axis_labels, known_size, labeled_axes, on_axis


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
        w = ctx.cost_shape(node.inputs[1])
        size = known_size(w, 2)  # its MACs still count: rows x k x n per sample
        ctx.cost(node, None if size is None else _gemm_rows(ctx, node, w[1 if attr(node, "transB", 0) else 0]) * size)
        return
    trans_b = bool(attr(node, "transB", 0))
    k, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    macs = _gemm_rows(ctx, node, k) * k * n
    vec, ok = _features(node, ctx, node.inputs[0], 1, k)
    if not ok:
        ctx.cost(node, macs)
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
    ctx.cost(node, macs, vec, atoms)
    ctx.set_layout(node.outputs[0], on_axis(atoms, 1, 2))


def _gemm_rows(ctx, node, k: int) -> int:
    """Rows per sample of a Gemm's input (several where a Reshape merged the batch with the tokens); one, as
    for [N, K], where the size is unknown."""
    size = ctx.sample_size(node.inputs[0])
    return size // k if size and k and size % k == 0 else 1


@handles("MatMul")
def matmul(node, ctx):
    a_t, b_t = node.inputs[0], node.inputs[1]
    b = ctx.const(b_t)
    a_shape = ctx.shape(a_t)
    if b is None or b.ndim != 2 or a_shape is None or len(a_shape) < 2:
        a_size, out_size = ctx.cost_shape(a_t), ctx.sample_size(node.outputs[0])
        known = out_size is not None and a_size is not None and a_size[-1] is not None
        _product(node, ctx, out_size * a_size[-1] if known else None)
        return
    k, n = b.shape
    rows = ctx.sample_size(a_t, 1)
    macs = None if rows is None else rows * k * n  # None: symbolic
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


def _product(node, ctx, macs: int | None) -> None:
    """MatMul of two run-time tensors (attention's Q·Kᵀ and P·V; docs/DESIGN.md, "Attention heads"). Channels
    on a batch axis of both operands are united position by position (head h of Q with head h of K) and
    carried to the output; channels on the left operand's rows or the right operand's columns are carried
    too. Channels on the contracted axis of both operands are summed over (`_contract`, with
    `--attention dims`); otherwise they freeze, as do channels on two axes or against an untracked operand
    that varies along them."""
    la, lb = ctx.layout(node.inputs[0]), ctx.layout(node.inputs[1])
    shapes = [ctx.const(t).shape if ctx.const(t) is not None else ctx.shape(t) for t in node.inputs]
    out_shape = ctx.shape(node.outputs[0])
    why = None
    if la is None and lb is None:
        why = ""
    elif out_shape is None or any(s is None or len(s) < 2 for s in shapes):
        why = "MatMul of run-time tensors with unknown or 1-D shapes"
    if why is not None:
        if why:
            ctx.freeze_node(node, why)
        ctx.cost(node, macs)  # None: symbolic size, unknown
        return
    rank = len(out_shape)
    labs = [None if lab is None else lab.reshape((1,) * (rank - lab.ndim) + lab.shape) for lab in (la, lb)]
    full = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    contracted = (rank - 1, rank - 2)                  # K: the left operand's last axis, the right's second last
    carried = (rank - 2, rank - 1)                     # M of the left operand, N of the right one
    placed = []
    summed = []
    for i, lab in enumerate(labs):
        if lab is None:
            continue
        axes = labeled_axes(lab)
        if len(axes) > 1:
            why = "MatMul of run-time tensors with channels on two axes of one operand"
        elif axes and axes[0] == contracted[i] and ctx.attention == "dims":
            summed.append(lab.reshape(-1))
        elif axes and axes[0] == contracted[i]:
            why = "MatMul of run-time tensors contracts channels (they would mix)"
        elif axes:
            placed.append((i, axes[0], lab))
    if why is None and summed:
        if len(summed) == 2 and not placed and len(summed[0]) == len(summed[1]):
            _contract(node, ctx, macs, summed[0], summed[1])
            return
        why = "MatMul of run-time tensors contracts channels of one operand only, or beside other channels"
    if why is None and not placed:
        why = "MatMul of run-time tensors with a single channel whose axis is unknown"
    if why is None and len({a for _, a, _ in placed}) > 1:
        why = "MatMul of run-time tensors puts channels on two axes of its output"
    if why is None and placed:
        axis = placed[0][1]
        if axis < rank - 2:  # a batch axis: the other operand must carry the same channels there, or broadcast
            other = 1 - placed[0][0]
            if labs[other] is None and full[other][axis] not in (1, None):
                why = f"combined with tensor '{node.inputs[other].name}' whose channels are not tracked"
        elif axis != carried[placed[0][0]]:
            why = "MatMul of run-time tensors moves channels"
    if why is not None:
        ctx.freeze_node(node, why)
        ctx.cost(node, macs)
        return
    _, axis, base = placed[0]
    vec = base.reshape(-1)  # one labelled axis: its labels
    for _, _, lab in placed[1:]:
        ctx.unite(vec, lab.reshape(-1), node)
    ctx.cost(node, macs, vec)
    ctx.set_layout(node.outputs[0], on_axis(vec, axis, rank))


def _contract(node, ctx, macs: int | None, left: np.ndarray, right: np.ndarray) -> None:
    """Q·Kᵀ summing over channels of both operands (docs/DESIGN.md, "Dims within heads"): channel d of Q is
    united with channel d of K, and the product reads them the way a consumer does, with no weight: removing a
    channel removes one term of every sum. The masked reference multiplies the left operand by the channels'
    gates on its last axis (edit 'mask_input'); the output carries no channels."""
    ctx.unite(left, right, node)
    ctx.contractions.append((ctx.node_id(node), left.copy(), right.copy()))
    ctx.edit("mask_input", node, input=0, axis=-1, labels=left.copy())
    ctx.cost(node, macs, left)


@handles("Gather")
def gather(node, ctx):
    """Rows of a constant 2-D table picked by run-time indices (an embedding lookup) produce the table's
    columns as channels on the last axis. A Gather along a non-channel axis of a tracked tensor (a class
    token's row) carries its channels; one along a channel axis freezes. Shape arithmetic is untracked."""
    data, idx = node.inputs[0], node.inputs[1]
    table = ctx.const(data)
    axis = attr(node, "axis", 0)
    lab = ctx.layout(data)
    if table is not None and table.ndim == 2 and axis % 2 == 0 and ctx.const(idx) is None \
            and np.issubdtype(table.dtype, np.floating):
        out_shape = ctx.shape(node.outputs[0])
        if out_shape is None:
            return
        atoms = ctx.produce(node, table.shape[1])
        ctx.edit("producer", node, input=0, axis=1, labels=atoms)
        ctx.set_layout(node.outputs[0], on_axis(atoms, len(out_shape) - 1, len(out_shape)))
        return
    if lab is None:
        return
    axis %= lab.ndim
    where = ctx.const(idx)
    if axis in labeled_axes(lab) or where is None:
        ctx.freeze(lab, node, "Gather along a channel axis or by run-time indices on channels")
        return
    shape = list(lab.shape)
    out = lab.reshape(shape[:axis] + [1] * max(np.ndim(where), 0) + shape[axis + 1:]) if np.ndim(where) else \
        np.take(lab, 0, axis=axis)
    ctx.set_layout(node.outputs[0], out)
