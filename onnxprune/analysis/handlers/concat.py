"""Concat, Split and Slice: channel ranges made of, or cut from, other tensors' channels."""
from __future__ import annotations

import math

import numpy as np

from ..records import FIXED
from . import handles, shape_expr
from .base import attr, axis_labels, input_or_attr, labeled_axes, on_axis, single


@handles("Concat")
def concat(node, ctx):
    labs = [ctx.layout(t) for t in node.inputs]
    if all(lab is None for lab in labs):
        return
    rank = next(lab.ndim for lab in labs if lab is not None)
    axis = attr(node, "axis") % rank
    one_channel = all(lab is None or single(lab) for lab in labs)  # which axis is the channel axis?
    channel_concat = any(lab is not None and lab.shape[axis] > 1 for lab in labs) or (one_channel and axis == 1)
    if not channel_concat:
        # channels ride along a concatenation of another axis: they must agree positionally
        out = next(lab for lab in labs if lab is not None)
        for t, lab in zip(node.inputs, labs):
            if lab is not None:
                ctx.unite(out, lab, node)
            elif ctx.const(t) is None and any((ctx.shape(t) or [None] * rank)[a] != 1 for a in labeled_axes(out)):
                ctx.freeze(out, node, f"concatenated with untracked run-time tensor '{t.name}'")
                return
        ctx.set_layout(node.outputs[0], out)
        return
    parts = []
    for t, lab in zip(node.inputs, labs):
        shape = ctx.const(t).shape if ctx.const(t) is not None else ctx.shape(t)
        size = lab.shape[axis] if lab is not None and lab.shape[axis] > 1 else (shape[axis] if shape else None)
        vec = axis_labels(lab, axis, size) if lab is not None and size is not None else None
        if size is None or (lab is not None and vec is None):
            for other in labs:
                if other is not None:
                    ctx.freeze(other, node, "concatenates channels laid out differently or of unknown size")
            return
        parts.append(vec if vec is not None else np.full(size, FIXED, dtype=np.int64))
    ctx.set_layout(node.outputs[0], on_axis(np.concatenate(parts), axis, rank))


def _channel_split(node, ctx, lab, axis):
    """1-D labels along `axis`, or None (frozen) if channels also live on other axes."""
    vec = axis_labels(lab, axis, lab.shape[axis])
    if vec is None:
        ctx.freeze(lab, node, "cuts a channel axis while channels also live on another axis")
    return vec


@handles("Split")
def split(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    axis = attr(node, "axis", 0) % lab.ndim
    if axis not in labeled_axes(lab):
        for out in node.outputs:
            ctx.set_layout(out, lab)
        return
    vec = _channel_split(node, ctx, lab, axis)
    if vec is None:
        return
    sizes, ok = input_or_attr(node, ctx, 1, "split")
    if not ok:
        ctx.freeze(lab, node, "split sizes computed at run time")
        return
    n_out = len(node.outputs)
    if sizes is None:
        chunk = -(-len(vec) // n_out)
        sizes = [min(chunk, len(vec) - i * chunk) for i in range(n_out)]
    bounds = np.cumsum([0] + [int(s) for s in np.asarray(sizes).reshape(-1)])
    pieces = [vec[bounds[i]:bounds[i + 1]] for i in range(n_out)]
    for out, piece in zip(node.outputs, pieces):
        ctx.set_layout(out, on_axis(piece, axis, lab.ndim))
    ctx.segments.extend(pieces)

    def fix(n, rw, pieces=pieces):
        new = np.array([int(rw.keep_mask(p).sum()) for p in pieces], dtype=np.int64)
        n.attrs.pop("num_outputs", None)
        if "split" in n.attrs:
            n.attrs["split"] = [int(x) for x in new]
        else:
            rw.set_const(n, 1, new)
    ctx.edit("call", node, fn=fix)


@handles("Slice")
def slice_(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    present = [len(node.inputs) > i and not node.inputs[i].is_empty() for i in range(1, 5)]
    vals = [ctx.const(node.inputs[i + 1]) if present[i] else None for i in range(4)]
    if any(present[i] and vals[i] is None for i in (2, 3)):
        ctx.freeze(lab, node, "slice axes or steps computed at run time")
        return
    if any(present[i] and vals[i] is None for i in (0, 1)):
        _runtime_slice(node, ctx, lab, vals[2], vals[3])
        return
    starts, ends, axes, steps = vals
    axes = list(range(len(starts))) if axes is None else [int(a) % lab.ndim for a in axes]
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    found = _channel_axes(node, ctx, lab, axes, steps)
    if found is None:
        return
    out = lab
    for i, a, vec in found:
        s, e, _ = slice(int(starts[i]), int(ends[i])).indices(len(vec))
        piece = vec[s:max(s, e)]
        out = on_axis(piece, a, lab.ndim)
        ctx.segments.append(piece)
        stop = max(s, e)

        def fix(n, rw, i=i, vec=vec, s=s, e=stop):
            keep = rw.keep_mask(vec)
            st = np.array(rw.const_of(n, 1)).copy()
            en = np.array(rw.const_of(n, 2)).copy()
            st[i], en[i] = int(keep[:s].sum()), int(keep[:e].sum())
            rw.set_const(n, 1, st)
            rw.set_const(n, 2, en)
        ctx.edit("call", node, fn=fix)
    ctx.set_layout(node.outputs[0], out)


def _channel_axes(node, ctx, lab, axes, steps) -> list | None:
    """(index, axis, channel labels) of each sliced channel axis; None (frozen) for a step on one."""
    found = []
    for i, a in enumerate(axes):
        if a not in labeled_axes(lab):
            continue
        vec = _channel_split(node, ctx, lab, a)
        if vec is None:
            return None
        if int(steps[i]) != 1:
            ctx.freeze(lab, node, "slices channels with a step")
            return None
        found.append((i, a, vec))
    return found


def _runtime_slice(node, ctx, lab, axes, steps):
    """Bounds computed from shapes at run time (TorchScript's torch.chunk). They are left in the graph,
    so they must recompute the right bounds in the pruned graph: the sliced axis is cut into n equal
    pieces that each keep the same number of channels, and a deferred check evaluates the bounds at
    every size the pruned axis can have. Anything else freezes."""
    n_axes = len(axes) if axes is not None else shape_expr.length(ctx, node.inputs[1])
    if n_axes is None:
        ctx.freeze(lab, node, "slice bounds computed at run time, of unknown length")
        return
    axes = list(range(n_axes)) if axes is None else [int(a) % lab.ndim for a in axes]
    steps = np.ones(n_axes, dtype=np.int64) if steps is None else np.asarray(steps).reshape(-1)
    bounds = [(shape_expr.element(ctx, node.inputs[1], i), shape_expr.element(ctx, node.inputs[2], i))
              for i in range(n_axes)]
    if any(b is None for pair in bounds for b in pair):
        ctx.freeze(lab, node, "slice bounds computed at run time by ops other than shape arithmetic")
        return
    found = _channel_axes(node, ctx, lab, axes, steps)
    if found is None:
        return
    if len(found) > 1:
        ctx.freeze(lab, node, "slices channels on two axes with bounds computed at run time")
        return
    out, cut = lab, None
    for i, a, vec in found:
        try:
            s, e, _ = slice(*(int(b(shape_expr.actual_size(ctx))) for b in bounds[i])).indices(len(vec))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            ctx.freeze(lab, node, "slice bounds computed at run time cannot be evaluated")
            return
        cut = (vec, s, max(s, e), bounds[i])
        out = on_axis(vec[s:max(s, e)], a, lab.ndim)
        ctx.segments.append(vec[s:max(s, e)])
    ctx.set_layout(node.outputs[0], out)
    others = [b for i, a in enumerate(axes) if a not in labeled_axes(lab) for b in bounds[i]]
    ctx.shape_checked.add(id(node))
    ctx.deferred.append(lambda: _check_runtime_slice(node, ctx, cut, others))


def _check_runtime_slice(node, ctx, cut, others):
    if cut is None and not others:
        return
    try:
        no_channels = shape_expr.pruned_sizes(ctx, np.zeros(0, dtype=np.int64))(0)  # raises on any channel axis
        for b in others:  # bounds on other axes must not depend on channel counts
            b(no_channels)
        if cut is None:
            return
        vec, s, e, (fs, fe) = cut
        c = len(vec)
        n = c // math.gcd(c, s, e)
        piece = c // n
        sizes = shape_expr.pruned_sizes(ctx, vec)
        for kept in range(1, piece + 1):  # every piece keeps `kept` channels
            size = sizes(n * kept)
            got = slice(int(fs(size)), int(fe(size))).indices(n * kept)[:2]
            if got != (s // piece * kept, e // piece * kept):
                raise ValueError("does not follow")
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        why = "slice bounds computed at run time do not follow the channel count"
        ctx.freeze(ctx.layout(node.inputs[0]), node, why)
        for b in ([*cut[3]] if cut is not None else []) + list(others):
            for tensor in b.dims.values():  # the channels whose count the bounds read
                if ctx.layout(tensor) is not None:
                    ctx.freeze(ctx.layout(tensor), node, why)
        return
    if n > 1:
        ctx.equal_pieces.append((node.name, vec, n))
