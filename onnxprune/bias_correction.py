"""Bias correction of a pruned model (docs/DESIGN.md, "Bias correction").

The re-fit matches each consumer's output means only on the rows it was fitted on: a few sampled positions per
image, on the network pruned up to then. Over all positions, after the groups pruned later (a residual stream's
consumers are fitted before the groups upstream of some of them), and at the channel-wise layers inside a group,
which are not re-fitted, the means drift; the drift adds up with depth. This pass shifts the bias of every Conv,
ConvTranspose and Gemm whose bias is an initializer, and of every exported Linear layer (a MatMul with a constant
weight and its bias Add; channels on the last axis), so that each kept output channel's mean over calibration
samples equals the original's mean of that channel; a layer whose output reaches a residual Add has the means of
that sum matched (with residual targets it was fitted to make up for the stream's error). Padding tokens are
left out of the means as they are out of the statistics (`token_mask`). Layers go in graph order, each measured
after the corrections of the layers upstream of it: one run of the pruned model cut after a wave of layers none
of which is upstream of another (the Q, K and V projections of one attention block are one wave), on the first
whole batches of the calibration split that hold `samples` samples. The correction is kept only when it lowers
the output loss (KL or MSE, as the global methods) on the held-out split; without a held-out split it is kept
as it is, and the report says so.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from .analysis import Analysis
from .calibration import Calibration, checked_batches
from .calibration.taps import Tap
from .graph.normalise import const_value
from .pipeline.held_out import GatedRecord, held_out_batches
from .rewrite import Rewriter
from .selection import Selection
from .statistics import linear_bias_add, residual_sum

log = logging.getLogger("onnxprune")

BIASED = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}   # op -> index of its bias input


@dataclass
class BiasCorrectionRecord(GatedRecord):
    """What the bias correction did (the report's `bias_correction`)."""
    layers: int = 0                   # biases shifted
    samples: int = 0                  # calibration samples the means are measured on
    seconds: float = 0.0
    mean_shift: float = 0.0           # the largest over layers of the RMS shift / the RMS channel std there


@dataclass
class _Layer:
    node: int                         # index in the analysis graph of the node adding the bias
    index: int                        # the bias input
    output: str                       # the layer's output
    tensor: str                       # where its means are matched: its output, or the residual sum it reaches
    bias: str                         # the bias initializer in the pruned model
    kept: np.ndarray | None           # the original's channels the pruned tensor keeps, in order (None: all)
    scale: np.ndarray                 # what the bias is multiplied by on the way there, per original channel
    #                                   (Gemm's beta, the per-channel affine ops before the sum), or one value
    axis: int                         # the channel axis: 1 (Conv, ConvTranspose, Gemm) or -1 (MatMul + Add)


def correct_biases(analysis: Analysis, selection: Selection, pruned: onnx.ModelProto, cal: Calibration,
                   loss_kind: str, batch_size: int, samples: int = 256, quiet: bool = True,
                   token_mask: str | None = None) -> tuple[onnx.ModelProto, Selection, BiasCorrectionRecord]:
    """The pruned model and selection with the biases corrected (the shifts become re-fitted values of the
    selection, so the masked reference has them too), and the record; `pruned` and `selection` themselves
    when the held-out output loss does not fall. `token_mask`: the input marking real tokens, whose padding
    rows stay out of the means (`Collector`), or None."""
    t0 = time.perf_counter()
    rec = BiasCorrectionRecord()
    model = onnx.ModelProto()
    model.CopyFrom(pruned)
    layers = _layers(analysis, selection, model)
    batches = _first(cal, batch_size, samples)
    rec.samples = sum(len(next(iter(b.values()))) for b in batches)
    if not layers or not rec.samples:
        rec.why = "no calibration samples" if layers else \
            "no Conv, ConvTranspose, Gemm or MatMul + Add with an initializer bias"
        return pruned, selection, rec
    axes = {x.tensor: x.axis for x in layers}
    ref = _moments(Tap(analysis.model, [x.tensor for x in layers]), batches, axes, token_mask)
    _declare_types(model, analysis, [x.tensor for x in layers])
    inits = {i.name: i for i in model.graph.initializer}
    replace = {node: dict(values) for node, values in selection.replace.items()}
    bar = tqdm(total=len(layers), desc="bias correction", unit="layer", disable=quiet or None)
    for wave in _waves(analysis, layers):
        measured = _moments(Tap(model, [x.tensor for x in wave]), batches, axes, token_mask, spread=False)
        for layer in wave:
            mean_o, std_o = ref[layer.tensor]
            kept = np.arange(len(mean_o)) if layer.kept is None else layer.kept
            mean_p, _ = measured[layer.tensor]
            if mean_p.shape != kept.shape:
                continue
            scale = np.broadcast_to(layer.scale, mean_o.shape)[kept]
            usable = np.abs(scale) > 1e-12 * max(float(np.abs(scale).max(initial=0.0)), 1e-300)
            shift = np.where(usable, (mean_o[kept] - mean_p) / np.where(usable, scale, 1.0), 0.0)
            bias = numpy_helper.to_array(inits[layer.bias])
            inits[layer.bias].CopyFrom(numpy_helper.from_array(
                (bias.astype(np.float64) + shift.reshape(bias.shape)).astype(bias.dtype), layer.bias))
            whole = replace.get(layer.node, {}).get(layer.index)
            if whole is None:
                whole = np.asarray(analysis.graph.nodes[layer.node].inputs[layer.index].values)
            corrected = whole.astype(np.float64).reshape(-1)
            corrected[kept] += shift
            replace.setdefault(layer.node, {})[layer.index] = corrected.reshape(whole.shape).astype(whole.dtype)
            rec.layers += 1
            assert std_o is not None   # the layer's root-mean-square shift in units of its channels' spread
            spread = float(np.sqrt(np.mean(std_o[kept] ** 2))) if len(kept) else 0.0
            drift = float(np.sqrt(np.mean((mean_o[kept] - mean_p) ** 2))) if len(kept) else 0.0
            rec.mean_shift = max(rec.mean_shift, drift / spread if spread > 0 else 0.0)
        bar.update(len(wave))
    bar.close()
    # a replaced node's slices are not scaled by γ again: under --refit full every γ is 1
    corrected_sel = Selection(selection.kept, selection.gamma, replace, selection.scores)
    keep, gamma = corrected_sel.class_arrays(analysis)
    result = Rewriter(analysis, keep, gamma, replace=replace).run()
    rec.judge(analysis.model, pruned, result, held_out_batches(cal, batch_size), loss_kind)
    rec.seconds = time.perf_counter() - t0
    log.info("bias correction: %d layers on %d samples, held-out output loss %s -> %s, %s (%.1f s)", rec.layers,
             rec.samples, rec.held_out_loss_before, rec.held_out_loss_after,
             "applied" if rec.applied else "not applied", rec.seconds)
    return (result, corrected_sel, rec) if rec.applied else (pruned, selection, rec)


def _layers(analysis: Analysis, selection: Selection, model: onnx.ModelProto) -> list[_Layer]:
    """The layers whose bias is corrected, in graph order: a Conv/ConvTranspose/Gemm with an initializer bias,
    or the bias Add of a MatMul with a constant weight (`linear_bias_add`), the bias used by that node alone,
    whose output the original has, with its channels on the layer's channel axis; each matched at the residual
    sum its output reaches (`residual_sum`; one layer per sum), else at its output."""
    keep, _ = selection.class_arrays(analysis)
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    ids = {n.outputs[0].name: i for i, n in enumerate(analysis.graph.nodes) if n.outputs}
    out: list[_Layer] = []
    matched: set[str] = set()
    for n in model.graph.node:
        if not n.output or n.output[0] not in ids:
            continue
        found = _bias_input(analysis, ids[n.output[0]])
        if found is None:
            continue
        b, axis = found
        if n.op_type != analysis.graph.nodes[ids[n.output[0]]].op or len(n.input) <= b or \
                n.input[b] not in inits or uses[n.input[b]] != 1:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Gemm" and (attrs.get("beta", 1.0) == 0 or
                                    int(np.prod(inits[n.input[b]].dims)) != _gemm_out(inits, n, attrs)):
            continue   # a bias broadcast over rows only: one per output column
        node = analysis.graph.nodes[ids[n.output[0]]]
        beta = np.full(1, float(attrs.get("beta", 1.0)))
        layer = None
        residual = residual_sum(analysis, node.outputs[0], axis)
        if residual is not None and residual[0] not in matched:   # match the sum the layer's output reaches
            scale = beta if residual[1] is None else beta * residual[1]
            layer = _layer(analysis, keep, ids[n.output[0]], b, n.output[0], residual[0], n.input[b], scale, axis)
        layer = layer or _layer(analysis, keep, ids[n.output[0]], b, n.output[0], n.output[0], n.input[b], beta,
                                axis)
        if layer is not None:
            matched.add(layer.tensor)
            out.append(layer)
    return out


def _layer(analysis: Analysis, keep: np.ndarray, node: int, index: int, output: str, tensor: str, bias: str,
           scale: np.ndarray, axis: int) -> _Layer | None:
    """The layer matching its means at `tensor`, or None when that tensor's channels are not on `axis` alone."""
    kept = None
    layout = analysis.layouts.get(tensor)
    if layout is not None:
        channels = [i for i, d in enumerate(layout.shape) if d > 1]
        if channels != [axis % layout.ndim]:
            return None
        kept = np.flatnonzero(keep[analysis.class_of[layout.reshape(-1)]])
    return _Layer(node, index, output, tensor, bias, kept, scale, axis)


def _bias_input(analysis: Analysis, node_id: int) -> tuple[int, int] | None:
    """(bias input, channel axis) of an analysis node whose bias the pass corrects, or None."""
    node = analysis.graph.nodes[node_id]
    if node.op in BIASED:
        b = BIASED[node.op]
        return (b, 1) if len(node.inputs) > b and const_value(node.inputs[b]) is not None else None
    if node.op != "Add":
        return None
    for x in node.inputs:
        mm = x.inputs[0] if x.inputs else None   # the tensor's producer
        w = const_value(mm.inputs[1]) if mm is not None and mm.op == "MatMul" and len(mm.inputs) == 2 else None
        if w is not None and w.ndim == 2:
            found = linear_bias_add(analysis, mm)
            if found is not None and found[0] == node_id:
                return found[1], -1
    return None


def _waves(analysis: Analysis, layers: list[_Layer]) -> list[list[_Layer]]:
    """The layers in runs, in graph order, where no layer of a run is upstream of another: each run is measured
    in one pass after the corrections of the runs before it, which is what measuring them one by one gives."""
    index = {x.output: i for i, x in enumerate(layers)}
    tensors = analysis.graph.tensors()
    waves: list[list[_Layer]] = []
    for layer in layers:
        if waves and not _upstream(tensors[layer.tensor], index) & {index[x.output] for x in waves[-1]}:
            waves[-1].append(layer)
        else:
            waves.append([layer])
    return waves


def _upstream(tensor, index: dict[str, int]) -> set[int]:
    """The layers (`index`: tensor -> layer) whose output the tensor's producer reads, directly or not."""
    found: set[int] = set()
    seen = {tensor.name}
    todo = [t for n in tensor.inputs for t in n.inputs]
    while todo:
        t = todo.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        if t.name in index:
            found.add(index[t.name])
        todo.extend(x for n in t.inputs for x in n.inputs)
    return found


def _declare_types(model: onnx.ModelProto, analysis: Analysis, names: list[str]) -> None:
    """Give the tapped tensors of the pruned copy the element types they have in the original (a tap of a
    tensor without one would read it as float32: an fp16 model's would not load)."""
    declared = {v.name for v in list(model.graph.value_info) + list(model.graph.output)}
    tensors = analysis.graph.tensors()
    for name in names:
        dtype = tensors[name].dtype if name in tensors else None
        if name not in declared and dtype is not None:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, None))


def _gemm_out(inits, node, attrs) -> int:
    """A Gemm's output columns, from its B initializer (-1 when B is not one)."""
    w = inits.get(node.input[1])
    if w is None or len(w.dims) != 2:
        return -1
    return int(w.dims[0] if attrs.get("transB", 0) else w.dims[1])


def _first(cal: Calibration, batch_size: int, samples: int) -> list[dict[str, np.ndarray]]:
    """Whole batches of the calibration split until they hold `samples` samples (not cut to it, as
    `OutputLoss` cuts its subset: a fixed-batch model runs whole batches only)."""
    out, n = [], 0
    for _, batch in checked_batches(cal, batch_size, "calib"):
        out.append(batch)
        n += len(next(iter(batch.values())))
        if n >= samples:
            break
    return out


def _moments(tap: Tap, batches, axes: dict[str, int], token_mask: str | None, spread: bool = True
             ) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Per channel (`axes[tensor]`) mean and, with `spread`, standard deviation of each tapped tensor over the
    batches (float64 sums of the float32 values); a [N, S, C] tensor of a model with a token mask counts its
    real tokens' rows only, as the statistics do (`Consumer.features`)."""
    acc: dict[str, list] = {}
    for batch in batches:
        tokens = np.asarray(batch[token_mask]) if token_mask else None
        for name, v in tap(batch).items():
            v = np.asarray(v)
            axis = axes[name] % v.ndim
            if tokens is not None and v.ndim == 3 and axis == 2 and v.shape[:2] == tokens.shape:
                v, axis = v[tokens != 0], 1   # [real tokens, C]
            other = tuple(i for i in range(v.ndim) if i != axis)
            a = acc.setdefault(name, [0.0, 0.0, 0])
            a[0] = a[0] + v.sum(other, dtype=np.float64)
            if spread:
                a[1] = a[1] + np.square(v).sum(other, dtype=np.float64)
            a[2] += v.size // v.shape[axis]
    moments = {}
    for name, (s1, s2, n) in acc.items():
        mean = s1 / n
        moments[name] = (mean, np.sqrt(np.maximum(s2 / n - mean * mean, 0.0)) if spread else None)
    return moments

