"""Channel-wise ops: activations (carriers), broadcasting arithmetic, normalisations."""
from __future__ import annotations

import numpy as np

from . import handles
from .base import attr, axis_labels, labeled_axes, single

UNARY = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
         "Softplus", "Softsign", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Identity", "Cast",
         "Floor", "Ceil", "Round", "Reciprocal", "Mish", "Sin", "Cos", "Sign", "ThresholdedRelu",
         "Dropout", "Clip", "IsNaN", "IsInf", "Not")


@handles(*UNARY)
def carrier(node, ctx):
    """Elementwise op of one tensor; extra operands (Clip bounds, Dropout ratio) must be constants."""
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    for extra in node.inputs[1:]:
        if not extra.is_empty() and ctx.const(extra) is None:
            ctx.freeze(lab, node, f"operand '{extra.name}' is computed at run time")
            return
    ctx.set_layout(node.outputs[0], lab)


def _aligned(shape: tuple, rank: int) -> tuple:
    return (1,) * (rank - len(shape)) + tuple(shape)


@handles("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where")
def broadcast(node, ctx):
    """Broadcasting arithmetic: unite the channels of labelled operands positionally (residual Add,
    SE gate Mul), slice per-channel constants, freeze on run-time tensors that are not tracked. `Where` is
    one too: its condition, like any operand, is sliced where it is a per-channel constant and must not vary
    along the channels where it is computed (a causal mask `Where(mask[S, S], -inf, scores[B, H, S, S])`)."""
    labs = [ctx.layout(t) for t in node.inputs]
    if all(lab is None for lab in labs):
        return
    rank = max(lab.ndim for lab in labs if lab is not None)
    for t in node.inputs:
        shp = ctx.shape(t) if ctx.const(t) is None else ctx.const(t).shape
        if shp is not None:
            rank = max(rank, len(shp))
    labs = [None if lab is None else lab.reshape(_aligned(lab.shape, rank)) for lab in labs]
    labelled = [lab for lab in labs if lab is not None]
    base = next((lab for lab in labelled if not single(lab)), labelled[0])
    try:
        out = np.broadcast_to(base, np.broadcast_shapes(*(lab.shape for lab in labelled)))
    except ValueError:
        for lab in labelled:
            ctx.freeze(lab, node, "operands' channel layouts do not broadcast")
        return
    for lab in labelled:
        if lab is base or (single(lab) and not single(out)):
            continue  # one channel broadcast over many: nothing to keep together (it has no consumer here)
        ctx.unite(out, lab, node)
    axes = labeled_axes(out)
    for i, t in enumerate(node.inputs):
        if labs[i] is not None or t.is_empty():
            continue
        val = ctx.const(t)
        shp = _aligned(val.shape if val is not None else (ctx.shape(t) or ()), rank) \
            if (val is not None or ctx.shape(t) is not None) else None
        if shp is None:
            ctx.freeze(out, node, f"operand '{t.name}' has unknown shape")
            return
        varying = [a for a in axes if shp[a] != 1]
        if not varying:
            continue
        if val is None:
            ctx.freeze(out, node, f"combined with run-time tensor '{t.name}' whose channels are not tracked")
            return
        if len(axes) != 1:
            ctx.freeze(out, node, f"constant '{t.name}' varies along several channel axes")
            return
        vec = axis_labels(out, axes[0], out.shape[axes[0]])
        ctx.edit("param", node, input=i, axis=axes[0] - (rank - val.ndim), labels=vec)
    ctx.set_layout(node.outputs[0], out)


def _per_channel_params(node, ctx, inputs: range):
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    shape = ctx.shape(node.inputs[0])
    channels = shape[1] if shape is not None and len(shape) > 1 and shape[1] is not None else lab.shape[1]
    vec = axis_labels(lab, 1, channels)
    if vec is None:
        ctx.freeze(lab, node, "channels are not on axis 1")
        return
    for i in inputs:
        if i >= len(node.inputs) or node.inputs[i].is_empty():
            continue
        if ctx.const(node.inputs[i]) is None:
            ctx.freeze(lab, node, f"parameter '{node.inputs[i].name}' is computed at run time")
            return
        ctx.edit("param", node, input=i, axis=0, labels=vec)
    ctx.set_layout(node.outputs[0], lab)


@handles("BatchNormalization")
def batchnorm(node, ctx):
    _per_channel_params(node, ctx, range(1, 5))


@handles("InstanceNormalization")
def instancenorm(node, ctx):
    _per_channel_params(node, ctx, range(1, 3))


# why a LayerNorm over the hidden size freezes it (the analysis of fused SkipLayerNormalization says the same)
HIDDEN_FROZEN = "normalises over the channel axis (a hidden size cannot shrink)"


@handles("LayerNormalization")
def layernorm(node, ctx):
    """Normalises over axes [axis, rank): a channel axis among them mixes channels (frozen)."""
    lab = ctx.layout(node.inputs[0])
    if lab is None:
        return
    axis = attr(node, "axis", -1) % lab.ndim
    if any(a >= axis for a in labeled_axes(lab)):
        # the same channels come out (frozen): a residual stream stays one group, frozen for this reason
        ctx.freeze(lab, node, HIDDEN_FROZEN)
    ctx.set_layout(node.outputs[0], lab)
