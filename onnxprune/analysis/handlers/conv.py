"""Conv (plain, grouped, depthwise) and ConvTranspose."""
from __future__ import annotations

import numpy as np

from . import handles
from .base import attr, axis_labels, known_size, on_axis


def _spatial(shape) -> int | None:
    if shape is None or any(d is None for d in shape[2:]):
        return None
    return int(np.prod(shape[2:], dtype=np.int64))


def _input_labels(node, ctx, channels: int):
    """Labels of the input channels, or None (untracked); freezes labels not on axis 1."""
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return None, None
    vec = axis_labels(lab, 1, channels)
    if vec is None:
        ctx.freeze(lab, node, "channels are not on axis 1 of a Conv input")
    return lab, vec


def _bias(node, ctx, labels):
    """Slice the bias with the output channels; recorded even when absent, as a re-fit may add one."""
    ctx.edit("param", node, input=2, axis=0, labels=labels)


def _set_group(count_labels):
    def fn(node, rw):
        node.attrs["group"] = int(rw.keep_mask(count_labels).sum())
    return fn


@handles("Conv")
def conv(node, ctx):
    w = ctx.const(node.inputs[1])
    group = int(attr(node, "group", 1))
    out = node.outputs[0]
    spatial = _spatial(ctx.cost_shape(out))
    if w is None or (len(node.inputs) > 2 and not node.inputs[2].is_empty() and ctx.const(node.inputs[2]) is None):
        # still a layer of the model (a QDQ model's DequantizeLinear weights): its MACs count, from the shapes
        ctx.freeze_node(node, "weights or bias computed at run time")
        size = known_size(ctx.cost_shape(node.inputs[1]), len(ctx.cost_shape(out) or ()))  # [Cout, Cin/g, k...]
        ctx.cost(node, None if size is None or spatial is None else spatial * size)
        return
    cout, cin_g = w.shape[0], w.shape[1]
    cin = cin_g * group
    kernel = int(np.prod(w.shape[2:], dtype=np.int64))
    macs = None if spatial is None else spatial * cout * cin_g * kernel  # None: size symbolic
    lab, vec = _input_labels(node, ctx, cin)
    if lab is not None and vec is None:
        ctx.cost(node, macs)
        return
    rank = len(w.shape)
    if group > 1 and group == cin == cout:  # depthwise: a carrier, one filter per channel
        if vec is None:
            ctx.cost(node, macs)
            return
        ctx.edit("param", node, input=1, axis=0, labels=vec)
        _bias(node, ctx, vec)
        ctx.edit("call", node, fn=_set_group(vec))
        ctx.cost(node, macs, vec)
        ctx.set_layout(out, on_axis(vec, 1, rank))
        return
    if vec is not None:
        if group > 1:
            ctx.edit("grouped_consumer", node, input=1, axis=1, labels=vec, groups=group)
            ctx.block_constraints.append((node.name, vec, group))
        else:
            ctx.edit("consumer", node, input=1, axis=1, labels=vec)
    atoms = ctx.produce(node, cout)
    ctx.edit("producer", node, input=1, axis=0, labels=atoms)
    if group > 1:
        ctx.block_constraints.append((node.name, atoms, group))
    _bias(node, ctx, atoms)
    ctx.cost(node, macs, vec, atoms)
    ctx.set_layout(out, on_axis(atoms, 1, rank))


@handles("ConvTranspose")
def conv_transpose(node, ctx):
    w = ctx.const(node.inputs[1])
    group = int(attr(node, "group", 1))
    spatial = _spatial(ctx.cost_shape(node.inputs[0]))
    if w is None or group != 1 or "output_shape" in node.attrs:
        ctx.freeze_node(node, "grouped, shape-fixed or run-time-weight ConvTranspose is not supported")
        # weight [Cin, Cout/g, k...]: Cout/g·k MACs per input channel and position
        size = known_size(ctx.cost_shape(node.inputs[1]), len(ctx.cost_shape(node.inputs[0]) or ()))
        ctx.cost(node, None if size is None or spatial is None else spatial * size)
        return
    cin, cout = w.shape[0], w.shape[1]
    macs = None if spatial is None else spatial * cin * cout * int(np.prod(w.shape[2:], dtype=np.int64))
    lab, vec = _input_labels(node, ctx, cin)
    if lab is not None and vec is None:
        ctx.cost(node, macs)
        return
    if vec is not None:
        ctx.edit("consumer", node, input=1, axis=0, labels=vec)
    atoms = ctx.produce(node, cout)
    ctx.edit("producer", node, input=1, axis=1, labels=atoms)
    _bias(node, ctx, atoms)
    ctx.cost(node, macs, vec, atoms)
    ctx.set_layout(node.outputs[0], on_axis(atoms, 1, len(w.shape)))
