"""Pooling, reductions, padding, resizing, softmax: channel-wise unless they act on the channel axis."""
from __future__ import annotations

import numpy as np

from . import handles, shape_expr
from .base import attr, input_or_attr, labeled_axes, opset


@handles("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    if any(a != 1 for a in labeled_axes(lab)):
        ctx.freeze(lab, node, "channels are not on axis 1 of a pooling input")
        return
    ctx.set_layout(node.outputs[0], lab)


@handles("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
         "ReduceLogSumExp", "ReduceSumSquare", "ReduceLogSum")
def reduce(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    axes, ok = input_or_attr(node, ctx, 1, "axes")
    if not ok:
        ctx.freeze(lab, node, "reduction axes computed at run time")
        return
    if axes is None or len(np.atleast_1d(axes)) == 0:
        if attr(node, "noop_with_empty_axes", 0):
            ctx.set_layout(node.outputs[0], lab)
            return
        axes = range(lab.ndim)
    axes = sorted({int(a) % lab.ndim for a in np.atleast_1d(axes)})
    if set(axes) & set(labeled_axes(lab)):
        ctx.freeze(lab, node, "reduces over the channel axis")
        return
    out = lab if attr(node, "keepdims", 1) else np.squeeze(lab, axis=tuple(axes))
    ctx.set_layout(node.outputs[0], out)


@handles("Pad")
def pad(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    pads, ok = input_or_attr(node, ctx, 1, "pads")
    axes_in = ctx.const(node.inputs[3]) if len(node.inputs) > 3 and not node.inputs[3].is_empty() else None
    if not ok or pads is None or (len(node.inputs) > 3 and not node.inputs[3].is_empty() and axes_in is None):
        ctx.freeze(lab, node, "pads computed at run time")
        return
    axes = [int(a) % lab.ndim for a in axes_in] if axes_in is not None else list(range(lab.ndim))
    pads = np.asarray(pads).reshape(-1)
    n = len(axes)
    for i, a in enumerate(axes):
        if a in labeled_axes(lab) and (pads[i] != 0 or pads[i + n] != 0):
            ctx.freeze(lab, node, "pads the channel axis")
            return
    ctx.set_layout(node.outputs[0], lab)


@handles("Resize", "Upsample")
def resize(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    ch = labeled_axes(lab)
    idx_scales = 1 if node.op == "Upsample" else 2
    scales = ctx.const(node.inputs[idx_scales]) if len(node.inputs) > idx_scales and \
        not node.inputs[idx_scales].is_empty() else None
    sizes_t = node.inputs[3] if node.op == "Resize" and len(node.inputs) > 3 and \
        not node.inputs[3].is_empty() else None
    if "scales" in node.attrs:
        scales = np.asarray(node.attrs["scales"])
    if "axes" in node.attrs:
        ctx.freeze(lab, node, "Resize with axes is not supported on channels")
        return
    if sizes_t is not None:
        sizes = ctx.const(sizes_t)
        vecs = {a: lab.reshape(-1) for a in ch}
        if sizes is None:
            # run time sizes (paddle2onnx's upsample by size: Concat(Slice(Shape(x), 0:2), [H, W])): left in
            # the graph, they must give the kept count on the channel axis and read no count elsewhere
            ctx.shape_checked.add(id(node))
            ctx.deferred.append(lambda: _check_runtime_sizes(node, ctx, lab, sizes_t, vecs))
            ctx.set_layout(node.outputs[0], lab)
            return

        def fix(n, rw, vecs=vecs):
            new = np.array(rw.const_of(n, 3)).copy()
            for a, vec in vecs.items():
                new[a] = int(rw.keep_mask(vec).sum())
            rw.set_const(n, 3, new)
        if ch:
            ctx.edit("call", node, fn=fix)
    elif scales is None or scales.size == 0 or any(float(scales.reshape(-1)[a]) != 1.0 for a in ch):
        ctx.freeze(lab, node, "resizes the channel axis or scales computed at run time")
        return
    ctx.set_layout(node.outputs[0], lab)


def _check_runtime_sizes(node, ctx, lab, sizes_t, vecs) -> None:
    n = shape_expr.length(ctx, sizes_t)
    for i in range(n or 0):
        elem = shape_expr.element(ctx, sizes_t, i)
        ok = shape_expr.follows(ctx, elem, vecs[i]) if i in vecs else shape_expr.reads_no_channels(ctx, elem)
        if not ok:
            shape_expr.freeze_read(ctx, node, lab, [elem], f"output size {i} computed at run time does not follow "
                                                           "the channel count")
            return
    if n is None:
        ctx.freeze(lab, node, "output sizes computed at run time, of unknown length")


@handles("Softmax", "LogSoftmax", "Hardmax")
def softmax(node, ctx):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    if opset(ctx) < 13:
        axis = attr(node, "axis", 1) % lab.ndim
        hit = any(a >= axis for a in labeled_axes(lab))
    else:
        hit = attr(node, "axis", -1) % lab.ndim in labeled_axes(lab)
    if hit:
        ctx.freeze(lab, node, "normalises over the channel axis")
        return
    ctx.set_layout(node.outputs[0], lab)
