"""Concat, Split and Slice: channel ranges made of, or cut from, other tensors' channels."""
from __future__ import annotations

import numpy as np

from . import handles
from .base import attr, axis_labels, input_or_attr, labeled_axes, on_axis, single

FIXED = 0


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
    vals = [ctx.const(node.inputs[i]) if len(node.inputs) > i and not node.inputs[i].is_empty() else None
            for i in range(1, 5)]
    if any(v is None and len(node.inputs) > i + 1 and not node.inputs[i + 1].is_empty()
           for i, v in enumerate(vals)):
        ctx.freeze(lab, node, "slice bounds computed at run time")
        return
    starts, ends, axes, steps = vals
    axes = list(range(len(starts))) if axes is None else [int(a) % lab.ndim for a in axes]
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    out = lab
    for i, a in enumerate(axes):
        if a not in labeled_axes(lab):
            continue
        vec = _channel_split(node, ctx, lab, a)
        if vec is None:
            return
        if int(steps[i]) != 1:
            ctx.freeze(lab, node, "slices channels with a step")
            return
        s, e, _ = slice(int(starts[i]), int(ends[i])).indices(len(vec))
        piece = vec[s:max(s, e)]
        out = on_axis(piece, a, lab.ndim)
        ctx.segments.append(piece)

        def fix(n, rw, i=i, vec=vec, s=s, e=max(s, e)):
            keep = rw.keep_mask(vec)
            st = np.array(rw.const_of(n, 1)).copy()
            en = np.array(rw.const_of(n, 2)).copy()
            st[i], en[i] = int(keep[:s].sum()), int(keep[:e].sum())
            rw.set_const(n, 1, st)
            rw.set_const(n, 2, en)
        ctx.edit("call", node, fn=fix)
    ctx.set_layout(node.outputs[0], out)
