"""Ops that move channels between axes: Flatten, Reshape, Transpose, Squeeze, Unsqueeze; and Shape."""
from __future__ import annotations

import numpy as np

from . import handles, shape_expr
from .base import attr, input_or_attr, labeled_axes

SHAPE_ARITH = {"Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Cast", "Mul", "Div", "Add", "Sub",
               "Identity", "Floor", "Ceil"}


def _collapse(lab: np.ndarray) -> np.ndarray:
    """Drop the repetition of labels along axes where they do not vary."""
    for ax in range(lab.ndim):
        if lab.shape[ax] > 1:
            first = np.take(lab, [0], axis=ax)
            if np.array_equal(np.broadcast_to(first, lab.shape), lab):
                lab = first
    return lab


def _relayout(node, ctx, lab, out_shape_rest):
    """Reshape-like move of labels: return the output layout, or None (and freeze) when channels would
    mix with another axis (channel shuffle, splitting a channel axis in two...)."""
    in_shape = ctx.shape(node.inputs[0])
    if in_shape is None or out_shape_rest is None or any(d is None for d in in_shape[1:]) \
            or any(d is None for d in out_shape_rest) or lab.shape[0] != 1:
        ctx.freeze(lab, node, "shapes are not known statically")
        return None
    full = np.broadcast_to(lab, (1,) + tuple(in_shape[1:]))
    if full.size != int(np.prod(out_shape_rest, dtype=np.int64)):
        ctx.freeze(lab, node, "reshapes the batch axis together with channels")
        return None
    out_full = full.reshape((1,) + tuple(out_shape_rest))
    out = _collapse(out_full)
    ins, outs = labeled_axes(lab), labeled_axes(out)
    if len(ins) == 1 and len(outs) == 1:
        vin = lab.reshape(-1)
        vout = out.reshape(-1)
        # channels merged with (or split from) other axes, channel-major (NCHW) or channel-minor (NHWC)
        for short, long in ((vin, vout), (vout, vin)):
            r = len(long) // len(short)
            if len(long) % len(short) == 0 and (np.array_equal(np.repeat(short, r), long) or
                                                np.array_equal(np.tile(short, r), long)):
                return out
    if len(ins) == 1 and len(outs) == 2 and outs[1] == outs[0] + 1:
        tied = _split_channel_axis(node, ctx, lab.reshape(-1), out_full, outs[0])
        if tied is not None:
            return tied
    ctx.freeze(lab, node, "moves channels across axes in a way onnxprune does not follow")
    return None


def _split_channel_axis(node, ctx, vin, out_full, b):
    """C channels reshaped to (g, C/g), as channel shuffle does before its Transpose. Pruning keeps the
    reshape valid and the shuffle a permutation of the kept channels only if every block keeps the same
    positions: channel j of each block is tied to channel j of block 0 (they go or stay together)."""
    block = np.moveaxis(out_full, (b, b + 1), (0, 1))[(slice(None), slice(None)) + (0,) * (out_full.ndim - 2)]
    if not np.array_equal(block.reshape(-1), vin):
        return None
    for i in range(1, block.shape[0]):
        ctx.unite(block[0], block[i], node, "channel shuffle ties a channel to a fixed one")
    shape = [1] * out_full.ndim
    shape[b + 1] = block.shape[1]
    return block[0].reshape(shape)


@handles("Flatten")
def flatten(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    if attr(node, "axis", 1) % lab.ndim != 1:
        ctx.freeze(lab, node, "Flatten with axis other than 1 is not supported on channels")
        return
    shape = ctx.shape(node.inputs[0])
    rest = None if shape is None or any(d is None for d in shape[1:]) else (int(np.prod(shape[1:])),)
    out = _relayout(node, ctx, lab, rest)
    if out is not None:
        ctx.set_layout(node.outputs[0], out.reshape(1, -1))


@handles("Reshape")
def reshape(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    out_t = node.outputs[0]
    out_shape = ctx.shape(out_t)
    out = _relayout(node, ctx, lab, None if out_shape is None else tuple(out_shape[1:]))
    if out is None:
        return
    axes = labeled_axes(out)
    ctx.set_layout(out_t, out)
    if not axes:
        return
    b = axes[0]
    vout = out.reshape(-1)
    shape_t = node.inputs[1]
    const = ctx.const(shape_t)
    if const is not None:
        if int(const.reshape(-1)[b]) != -1:
            def fix(n, rw, vout=vout, b=b):
                new = np.array(rw.const_of(n, 1)).copy()
                new[b] = int(rw.keep_mask(vout).sum())
                rw.set_const(n, 1, new)
            ctx.edit("call", node, fn=fix)
        return
    elem = shape_expr.element(ctx, shape_t, b)

    def check(elem=elem, vout=vout):
        """A run-time target dim follows the pruning when, for any selection, it computes the kept count
        (or is -1): evaluated at every count the pruned axis can have."""
        if elem is not None and not elem.dims and elem(None) == -1:
            return
        if not shape_expr.follows(ctx, elem, vout):
            ctx.freeze(vout, node, "target shape computed at run time does not follow the channel count")
    ctx.deferred.append(check)


@handles("Transpose")
def transpose(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    perm = attr(node, "perm", None)
    perm = list(reversed(range(lab.ndim))) if perm is None else list(perm)
    if perm and perm[0] != 0 and lab.shape[perm[0]] > 1:
        ctx.freeze(lab, node, "moves channels to the batch axis")
        return
    ctx.set_layout(node.outputs[0], lab.transpose(perm))


@handles("Squeeze", "Unsqueeze")
def squeeze(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    axes, ok = input_or_attr(node, ctx, 1, "axes")
    if not ok:
        ctx.freeze(lab, node, "axes computed at run time")
        return
    if node.op == "Unsqueeze":
        rank = lab.ndim + len(axes)
        out = lab
        for a in sorted(int(x) % rank for x in axes):
            out = np.expand_dims(out, a)
    else:
        if axes is None:
            shape = ctx.shape(node.inputs[0])
            if shape is None:
                ctx.freeze(lab, node, "input shape unknown")
                return
            axes = [i for i, d in enumerate(shape) if d == 1]
        axes = tuple(int(a) % lab.ndim for a in axes)
        if any(lab.shape[a] != 1 for a in axes):
            ctx.freeze(lab, node, "squeezes a channel axis")
            return
        out = np.squeeze(lab, axis=axes)
    ctx.set_layout(node.outputs[0], out)


@handles("Shape")
def shape(node, ctx):
    """Shapes are data: allowed when they only feed Reshape targets or Slice bounds (checked there); else frozen."""
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    rank = lab.ndim
    start, end = attr(node, "start", 0) % rank if rank else 0, attr(node, "end", rank)
    end = end % rank if end < 0 else min(end, rank)
    if not any(start <= a < end for a in labeled_axes(lab)):
        return
    frontier, seen = [node.outputs[0]], set()
    while frontier:
        t = frontier.pop()
        for user in t.outputs:
            if id(user) in seen:
                continue
            seen.add(id(user))
            if user.op == "Reshape" and user.inputs[1] is t:
                continue
            if user.op == "Slice" and {i for i, x in enumerate(user.inputs) if x is t} <= {1, 2}:
                # bounds: checked by the Slice handler, which needs the data to carry channels
                ctx.deferred.insert(0, lambda user=user: ctx.layout(user.inputs[0]) is not None or ctx.freeze(
                    lab, node, f"the channel count sets the bounds of Slice node '{user.name}' on an untracked tensor"))
                continue
            if user.op in SHAPE_ARITH:
                frontier.extend(user.outputs)
                continue
            ctx.freeze(lab, node, f"the channel count feeds {user.op} node '{user.name}'")
            return
