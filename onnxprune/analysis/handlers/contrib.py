"""ONNX Runtime's com.microsoft ops that its transformer optimizer (`onnxruntime.transformers.optimizer`) fuses
a BERT-style graph into (docs/DESIGN.md, "ONNX Runtime's fused transformer ops").

The GELU family is channel-wise: `BiasGelu(A, bias)` and `FastGelu(X, bias?)` add a per-channel bias on the
last axis first, so an MLP's width between its two MatMuls stays a group, the bias sliced with it.
`SkipLayerNormalization` is the residual Add (input + skip + bias) and a LayerNormalization over the hidden
size: the stream's channels come out unchanged and frozen. A fused `Attention` node holds Q, K and V in one
weight and its heads inside: its channels freeze, with the reason saying to prune before fusing.
"""
from __future__ import annotations

from . import handles
from .base import labeled_axes
from .elementwise import HIDDEN_FROZEN, broadcast, carrier

MS = "com.microsoft"

handles("Gelu", "QuickGelu", domain=MS)(carrier)
handles("BiasGelu", "FastGelu", domain=MS)(broadcast)


@handles("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def skip_layernorm(node, ctx):
    """input + skip (+ bias) normalised over the last axis: the operands' channels united as a residual Add's,
    frozen where a channel axis is the last; outputs 0 and 3 (the normalised sum and the sum) carry them."""
    labs = [ctx.layout(t) for t in node.inputs[:2]]
    present = [lab for lab in labs if lab is not None]
    if not present:
        return
    lab = present[0]
    for other in present[1:]:
        if other.shape != lab.shape:
            for x in present:
                ctx.freeze(x, node, "input and skip have different channel layouts")
            return
        ctx.unite(lab, other, node)
    if any(a == lab.ndim - 1 for a in labeled_axes(lab)):
        ctx.freeze(lab, node, HIDDEN_FROZEN)
    for i in (0, 3):
        if i < len(node.outputs):
            ctx.set_layout(node.outputs[i], lab)


@handles("Attention", domain=MS)
def fused_attention(node, ctx):
    """Heads inside one fused node are not pruned: what flows in freezes, its output starts new channels."""
    ctx.freeze_node(node, "a fused attention node (ONNX Runtime's transformer optimizer): its heads are not "
                          "pruned; prune the model as exported, before fusing, to prune heads")
