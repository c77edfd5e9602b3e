"""Ops that move channels between axes: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, DepthToSpace,
SpaceToDepth; and Shape."""
from __future__ import annotations

import numpy as np

from . import handles, shape_expr
from .base import attr, axis_labels, input_or_attr, labeled_axes, on_axis


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
    if len(ins) <= 1 and not outs and np.unique(lab).size == 1:
        # one channel class on every position (channel shuffles tie ShuffleNet's passed-through halves
        # unit after unit until one class is left): it stays one class whatever the reshape
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
    if ctx.attention == "dims" and node.name not in ctx.heads_at and grid.ndim == 2 and j == 0 and \
            _one_projection(ctx, vin):
        # docs/DESIGN.md, "Dims within heads": dim d of every head is one channel (the channel-shuffle reading
        # the caller falls back to), so each head keeps the same dims and the reshape becomes [..., H, D']
        ctx.splits["dims"][node.name] = grid.copy()
        return None
    per_head = np.moveaxis(grid, j, 0).reshape(grid.shape[j], -1)
    for col in range(1, per_head.shape[1]):
        ctx.unite(per_head[:, 0], per_head[:, col], node, "a head's channels go or stay together")
    unit = int(np.prod(grid.shape[j + 1:], dtype=np.int64))
    ctx.heads.append((per_head[:, 0].copy(), unit))
    ctx.splits["heads"][node.name] = per_head[:, 0].copy()
    shape = [1] * out_full.ndim
    shape[outs[j]] = grid.shape[j]
    return per_head[:, 0].reshape(shape)


def _one_projection(ctx, vin) -> bool:
    """The channels split into heads are all the output of one producer. A fused Q/K/V projection (one MatMul
    whose output is split into q, k and v) keeps the heads reading with `--attention dims`: its pieces are
    one group, which cannot be Q·K dims in part and V dims in part."""
    atoms = set(vin.tolist())
    for _, produced in ctx.producer_atoms:
        mine = set(produced.tolist())
        if atoms & mine:
            return atoms == mine
    return False


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
    n_dims = shape_expr.length(ctx, shape_t)

    def check(elem=elem, vout=vout, b=b):
        """A run-time target dim follows the pruning when, for any selection, it computes the kept count
        (or is -1): evaluated at every count the pruned axis can have. A constant written into the target
        by a Concat (Keras 3's Flatten, TorchScript's `view(b, s, heads, d)`) is set to the kept count
        instead; so is an element computed at run time (a size read from another tensor) when its Concat
        is read by this Reshape only. The other dims must not read any channel count."""
        for i in range(n_dims or 0):
            other = shape_expr.element(ctx, shape_t, i) if i != b else None
            if other is not None and not shape_expr.reads_no_channels(ctx, other):
                shape_expr.freeze_read(ctx, node, vout, [other], f"target dim {i} computed at run time reads a "
                                                                 "channel count")
                return
        if elem is not None and not elem.dims and elem(None) == -1:
            return
        if shape_expr.follows(ctx, elem, vout):
            return
        src = shape_expr.const_source(ctx, shape_t, b)
        if src is not None and int(np.asarray(ctx.const(src[0].inputs[src[1]])).reshape(-1)[src[2]]) > 0:
            concat, i, j = src

            def fix(n, rw, i=i, j=j, vout=vout):
                new = np.array(rw.const_of(n, i)).copy()
                new.reshape(-1)[j] = int(rw.keep_mask(vout).sum())
                rw.set_const(n, i, new)
            ctx.edit("call", concat, fn=fix)
            return
        slot = shape_expr.concat_slot(ctx, shape_t, b, node)
        if slot is not None and _evaluates(ctx, elem) == len(vout):
            concat, index = slot

            def fix_elem(n, rw, vout=vout, index=index):
                rw.set_const(n, index, np.array([int(rw.keep_mask(vout).sum())], dtype=np.int64))
            ctx.edit("call", concat, fn=fix_elem)
            return
        shape_expr.freeze_read(ctx, node, vout, [shape_expr.element(ctx, shape_t, i) for i in range(n_dims or 0)],
                               "target shape computed at run time does not follow the channel count")
    ctx.shape_checked.add(id(node))
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


def _mode(node) -> str:
    mode = attr(node, "mode", "DCR")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def _channels_on_axis_1(node, ctx, lab):
    shape = ctx.shape(node.inputs[0])
    c = lab.shape[1] if lab.ndim > 1 and lab.shape[1] > 1 else (shape[1] if shape and len(shape) > 1 else None)
    vec = axis_labels(lab, 1, c) if c is not None and lab.ndim == 4 else None
    if vec is None:
        ctx.freeze(lab, node, "channels are not on axis 1 of a 4-D input")
    return vec


@handles("DepthToSpace")
def depth_to_space(node, ctx):
    """(N, C·s², H, W) -> (N, C, H·s, W·s), PyTorch's PixelShuffle: output channel c gathers s² input channels,
    c·s² + k in CRD mode and k·C + c in DCR mode. Those s² channels are tied (they go or stay together), so
    the producer is pruned in blocks of s² and the output carries one channel per block."""
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    vec = _channels_on_axis_1(node, ctx, lab)
    if vec is None:
        return
    s = int(attr(node, "blocksize"))
    if len(vec) % (s * s):
        ctx.freeze(lab, node, f"{len(vec)} channels are not a multiple of blocksize² {s * s}")
        return
    c = len(vec) // (s * s)
    blocks = vec.reshape(c, s * s).T if _mode(node) == "CRD" else vec.reshape(s * s, c)
    for k in range(1, s * s):
        ctx.unite(blocks[0], blocks[k], node, "DepthToSpace ties a channel to a fixed one")
    ctx.set_layout(node.outputs[0], on_axis(blocks[0], 1, 4))


@handles("SpaceToDepth")
def space_to_depth(node, ctx):
    """(N, C, H, W) -> (N, C·s², H/s, W/s): output channel k·C + c is input channel c at block position k,
    so each channel appears s² times along the output's channel axis (its consumers read s² features per
    channel, as after Flatten)."""
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    vec = _channels_on_axis_1(node, ctx, lab)
    if vec is None:
        return
    s = int(attr(node, "blocksize"))
    ctx.set_layout(node.outputs[0], on_axis(np.tile(vec, s * s), 1, 4))


@handles("Shape")
def shape(node, ctx):
    """Shapes are data. Which elements of the shape hold a channel count is followed through the shape
    arithmetic downstream (Gather, Slice, Concat, Unsqueeze, Cast, +-*/...): an element that never does
    (the batch, H or W of a YOLO head's anchors, fed to Range or ConstantOfShape) is free to go anywhere;
    one that does may only reach a Reshape target, a Resize's sizes or Slice bounds (each checked by its
    own handler, docs/DESIGN.md "Channel groups"); anything else freezes the channels it counts."""
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    rank = lab.ndim
    start, end = attr(node, "start", 0), attr(node, "end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    counted = np.array([a in labeled_axes(lab) for a in range(start, end)], dtype=bool)
    if not counted.any():
        return
    why = _follow_counts(ctx, node, lab, node.outputs[0], counted)
    if why:
        ctx.freeze(lab, node, why)


def _follow_counts(ctx, node, lab, out, counted: np.ndarray) -> str | None:
    """Follow which elements of shape tensor `out` hold channel counts (`counted`) through the nodes that read
    it, in graph order; the reason to freeze, or None."""
    masks = {out.name: counted}
    nodes, frontier, seen = [], [out], set()
    while frontier:
        t = frontier.pop()
        for user in t.outputs:
            if id(user) not in seen:
                seen.add(id(user))
                nodes.append(user)
                frontier.extend(user.outputs)
    for user in sorted(nodes, key=lambda n: ctx.index.get(id(n), len(ctx.index))):
        ins = [masks.get(t.name) if not t.is_empty() else None for t in user.inputs]
        if not any(m is not None and m.any() for m in ins):
            continue  # reads no channel count (or only through elements that hold none)
        if id(user) not in ctx.index:
            return f"the channel count is read inside a subgraph ({user.op} node '{user.name}')"
        hit = {i for i, m in enumerate(ins) if m is not None and m.any()}
        if user.op == "Reshape" and hit == {1} or user.op == "Resize" and hit == {3} or \
                user.op == "Slice" and hit <= {1, 2}:
            ctx.deferred.insert(0, lambda user=user: id(user) in ctx.shape_checked or ctx.freeze(
                lab, node, f"the channel count sets the shape of {user.op} node '{user.name}', which does not "
                           "follow it"))
            continue
        mask = _mask_out(ctx, user, ins)
        if mask is None:
            return f"the channel count feeds {user.op} node '{user.name}'"
        for t in user.outputs:
            masks[t.name] = mask
    return None


def _flat(m: np.ndarray) -> np.ndarray:
    return m.reshape(-1)


def _input_masks(ctx, node, ins) -> list[np.ndarray] | None:
    """Each input's flat mask, all-False (of the input's length) for an input without one; None when such an
    input's length is not known."""
    out = []
    for t, m in zip(node.inputs, ins):
        if m is None:
            n = shape_expr.length(ctx, t)
            if n is None:
                return None
            m = np.zeros(n, dtype=bool)
        out.append(_flat(m))
    return out


def _mask_out(ctx, node, ins) -> np.ndarray | None:
    """Which elements of the node's output hold a channel count, given its inputs'; None when the node is
    not shape arithmetic understood here (or the answer depends on values unknown)."""
    op = node.op
    if op in ("Unsqueeze", "Squeeze", "Identity", "Cast", "Floor", "Ceil", "Neg", "Abs", "Reshape", "Flatten"):
        return ins[0] if ins[0] is not None and all(m is None or not m.any() for m in ins[1:]) else None
    if op == "Gather" and attr(node, "axis", 0) == 0 and ins[0] is not None and not (ins[1] is not None and
                                                                                     ins[1].any()):
        ind = ctx.const(node.inputs[1])
        if ind is None:
            return None
        flat = _flat(ins[0])
        ind = np.asarray(ind).astype(np.int64)
        if np.any(ind >= len(flat)) or np.any(ind < -len(flat)):
            return None
        return flat[ind]
    if op == "Slice" and ins[0] is not None and all(m is None or not m.any() for m in ins[1:]):
        vals = [ctx.const(node.inputs[i]) if len(node.inputs) > i and not node.inputs[i].is_empty() else None
                for i in range(1, 5)]
        if vals[0] is None or vals[1] is None or (len(node.inputs) > 3 and not node.inputs[3].is_empty()
                                                  and vals[2] is None) or \
                (len(node.inputs) > 4 and not node.inputs[4].is_empty() and vals[3] is None):
            return None
        if vals[2] is not None and [int(a) for a in np.reshape(vals[2], -1)] not in ([0], [-1]):
            return None
        step = int(np.reshape(vals[3], -1)[0]) if vals[3] is not None else 1
        flat = _flat(ins[0])
        return flat[slice(*slice(int(np.reshape(vals[0], -1)[0]), int(np.reshape(vals[1], -1)[0]),
                                 step).indices(len(flat)))]
    if op == "Concat":
        parts = _input_masks(ctx, node, ins)
        return None if parts is None else np.concatenate(parts)
    if op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Mod"):
        full = _input_masks(ctx, node, ins)
        if full is None:
            return None
        try:
            return np.logical_or.reduce(np.broadcast_arrays(*full))
        except ValueError:
            return None
    return None
