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
    consecutive = len(outs) >= 2 and outs == list(range(outs[0], outs[0] + len(outs)))
    if len(ins) == 1 and consecutive:
        heads = _split_into_heads(node, ctx, lab.reshape(-1), out_full, outs)
        if heads is not None:
            return heads
    if len(ins) == 1 and len(outs) == 2 and outs[1] == outs[0] + 1:
        tied = _split_channel_axis(node, ctx, lab.reshape(-1), out_full, outs[0])
        if tied is not None:
            return tied
    ctx.freeze(lab, node, "moves channels across axes in a way onnxprune does not follow")
    return None


def _split_grid(vin, out_full, outs):
    """The channels' atoms as a grid over the new axes `outs` (None unless they are `vin` in order)."""
    moved = np.moveaxis(out_full, outs, range(len(outs)))
    grid = moved[(slice(None),) * len(outs) + (0,) * (out_full.ndim - len(outs))]
    return grid if np.array_equal(grid.reshape(-1), vin) else None


def _split_into_heads(node, ctx, vin, out_full, outs):
    """C channels reshaped to (..., H, D) ahead of an attention product (docs/DESIGN.md, "Attention heads"):
    the axis that becomes a batch axis of a MatMul of two run-time tensors holds the heads. Every atom of
    head h (its D channels, and those of the other new axes, e.g. the q/k/v pieces of a fused projection)
    is tied into one channel, so pruning keeps or removes whole heads and the reshape stays [..., H', D]."""
    grid = _split_grid(vin, out_full, outs)
    if grid is None:
        return None
    j = _head_axis(ctx, node.outputs[0], outs)
    if j is None:
        return None
    per_head = np.moveaxis(grid, j, 0).reshape(grid.shape[j], -1)
    for col in range(1, per_head.shape[1]):
        ctx.unite(per_head[:, 0], per_head[:, col], node, "a head's channels go or stay together")
    unit = int(np.prod(grid.shape[j + 1:], dtype=np.int64))
    ctx.heads.append((per_head[:, 0].copy(), unit))
    shape = [1] * out_full.ndim
    shape[outs[j]] = grid.shape[j]
    return per_head[:, 0].reshape(shape)


_SAME_AXES = ("Split", "Slice", "Identity", "Cast", "Softmax", "Relu", "Sigmoid", "Tanh", "Erf", "Neg")
_BROADCAST = ("Add", "Sub", "Mul", "Div")


def _head_axis(ctx, tensor, outs: list[int], limit: int = 64) -> int | None:
    """Which of the new axes `outs` of `tensor` is the head axis: follow the axes through Transpose,
    Squeeze/Unsqueeze, Split/Slice/Gather and elementwise ops to the MatMuls of two run-time tensors they
    reach; each must find exactly one of them (of size > 1) among its batch axes, the same one."""
    found: set = set()
    frontier = [(tensor, list(outs))]
    seen = 0
    while frontier and seen < limit:
        t, pos = frontier.pop()
        shape = ctx.shape(t)
        if shape is None:
            return None
        rank = len(shape)
        for user in t.outputs:
            seen += 1
            op = user.op
            new: list | None = None
            if op == "Transpose":
                perm = list(attr(user, "perm", None) or reversed(range(rank)))
                new = [None if p is None else perm.index(p) for p in pos]
            elif op in ("Squeeze", "Unsqueeze"):
                axes, ok = input_or_attr(user, ctx, 1, "axes")
                if not ok or axes is None:
                    continue
                if op == "Squeeze":
                    gone = {int(a) % rank for a in np.atleast_1d(axes)}
                    new = [None if p is None or p in gone else p - sum(g < p for g in gone) for p in pos]
                else:
                    out_rank = rank + len(np.atleast_1d(axes))
                    added = sorted(int(a) % out_rank for a in np.atleast_1d(axes))
                    kept = [i for i in range(out_rank) if i not in added]
                    new = [None if p is None else kept[p] for p in pos]
            elif op == "Gather" and user.inputs[0] is t:
                idx = ctx.const(user.inputs[1])
                axis = attr(user, "axis", 0) % rank
                if idx is None:
                    continue
                new = pos if np.ndim(idx) == 1 else \
                    [None if p is None or p == axis else p - (p > axis) for p in pos]
            elif op in _SAME_AXES:
                new = pos
            elif op in _BROADCAST:
                out_shape = ctx.shape(user.outputs[0])
                if out_shape is None:
                    continue
                new = [None if p is None else p + len(out_shape) - rank for p in pos]
            elif op == "MatMul":
                other = user.inputs[1] if user.inputs[0] is t else user.inputs[0]
                if ctx.const(other) is not None or rank < 3:
                    continue  # a linear layer: not an attention product
                batch = [i for i, p in enumerate(pos) if p is not None and p < rank - 2 and shape[p] != 1]
                found.add(batch[0] if len(batch) == 1 else None)
                continue
            if new is not None:
                frontier.extend((o, new) for o in user.outputs)
    return found.pop() if len(found) == 1 and None not in found else None


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
        (or is -1): evaluated at every count the pruned axis can have. Otherwise, when it is one element of
        a Concat that only this Reshape reads (TorchScript's `view(b, s, heads, d)`: a constant 12 or a
        size read from another tensor), that element becomes the kept count."""
        if elem is not None and not elem.dims and elem(None) == -1:
            return
        if shape_expr.follows(ctx, elem, vout):
            return
        slot = shape_expr.concat_slot(ctx, shape_t, b, node)
        full = _evaluates(ctx, elem)
        if slot is None or full != len(vout):
            why = "target shape computed at run time does not follow the channel count"
            ctx.freeze(vout, node, why)
            for tensor in (elem.dims.values() if elem is not None else ()):  # the channels whose count it reads
                if ctx.layout(tensor) is not None:
                    ctx.freeze(ctx.layout(tensor), node, why)
            return
        concat, index = slot

        def fix(n, rw, vout=vout, index=index):
            rw.set_const(n, index, np.array([int(rw.keep_mask(vout).sum())], dtype=np.int64))
        ctx.edit("call", concat, fn=fix)
    ctx.deferred.append(check)


def _evaluates(ctx, elem) -> int | None:
    """The value of a shape expression in the unpruned graph, or None."""
    if elem is None:
        return None
    try:
        return int(elem(shape_expr.actual_size(ctx)))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None


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
            if t is node.outputs[0] and _picks_fixed_dims(ctx, user, t, start, end, labeled_axes(lab)):
                continue  # e.g. the head size of q [B, H, S, D] for a 1/sqrt(D) scale: not a channel count
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


def _picks_fixed_dims(ctx, user, shape_t, start: int, end: int, channel_axes: list[int]) -> bool:
    """Whether `user` takes from the Shape output `shape_t` (dims start..end) only dims of axes that hold no
    channels (a Gather or Slice with constant indices): what it computes then never changes with pruning."""
    if user.op == "Gather" and user.inputs[0] is shape_t and attr(user, "axis", 0) == 0:
        idx = ctx.const(user.inputs[1])
        if idx is None:
            return False
        picked = {start + (int(i) % (end - start)) for i in np.atleast_1d(idx)}
    elif user.op == "Slice" and user.inputs[0] is shape_t:
        vals = [ctx.const(user.inputs[i]) if len(user.inputs) > i and not user.inputs[i].is_empty() else None
                for i in range(1, 5)]
        if vals[0] is None or vals[1] is None or (len(user.inputs) > 3 and vals[2] is None) or \
                (vals[3] is not None and int(np.atleast_1d(vals[3])[0]) != 1):
            return False
        s, e, _ = slice(int(np.atleast_1d(vals[0])[0]), int(np.atleast_1d(vals[1])[0])).indices(end - start)
        picked = {start + i for i in range(s, max(s, e))}
    else:
        return False
    return not picked & set(channel_axes)
