"""The Python API that the command line wraps.

    model, report = onnxprune.prune("model.onnx", "calib.npz", flops=0.5)

Every keyword of `prune` is a field of one of the option groups in `onnxprune.options`, where its
default, validation and meaning live.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import onnx

from .analysis import Analysis
from .errors import UnsupportedModel, UserError
from .graph import check_model, load_model, with_supported_opset
from .graph.inputs import symbolic_inputs
from .graph.session import check_loads
from .options import (
    AUTO,
    Allocation,
    AttentionSplit,
    CalibrationOptions,
    DistillOptions,
    GlobalOptions,
    GroupKind,
    ModelOptions,
    OptionError,
    PruneOptions,
    Refit,
    RefitOptions,
    SelectionOptions,
    TargetOptions,
)
from .report import Report, build_report
from .rewrite import Rewriter
from .selection import Selection, fit_to_target, select

log = logging.getLogger("onnxprune")
_T, _S, _C, _R, _G, _M = TargetOptions, SelectionOptions, CalibrationOptions, RefitOptions, GlobalOptions, ModelOptions
_D = DistillOptions


def _name(model) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else "<model>"


def _as_model(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        model = with_supported_opset(model)
        check_model(model)
        return model, _name(model)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), _name(model)
    raise UserError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")


def analyze(model, input_shapes: dict | None = None, attention: str | AttentionSplit = _M.attention) -> Analysis:
    """Channel groups of a model (path or ModelProto; a ModelProto is not modified). `input_shapes`
    (name -> dims, batch first) size the layers whose shapes are symbolic, for their MACs. `attention`: auto |
    heads | dims, what an attention block's channels are (auto: what `prune` with calibration data reads)."""
    proto, name = _as_model(model)
    opts = ModelOptions(input_shapes, AttentionSplit.parse("attention", attention))
    return _analysis(proto, model, opts.input_shapes, opts.attention, calibrated=True)


def _analysis(proto: onnx.ModelProto, model, input_shapes: dict | None,
              attention: AttentionSplit = AttentionSplit.HEADS, calibrated: bool = False) -> Analysis:
    """The analysis of `proto`; `attention` auto reads dims where they prune when `calibrated` (re-basing them
    needs calibration data), heads otherwise (`analysis.analyzer.attention_analysis`)."""
    from .analysis.analyzer import attention_analysis
    try:
        chosen = attention_analysis(proto, input_shapes) if attention == AttentionSplit.AUTO and calibrated else None
        if chosen is None:
            chosen = Analysis(proto, in_place=proto is not model, input_shapes=input_shapes,  # a loaded model is ours
                              attention="dims" if attention == AttentionSplit.DIMS else "heads")
        analysis = chosen
    except UnsupportedModel as exc:
        raise UnsupportedModel(f"{_name(model)}: {exc}") from None
    quantized = None if analysis.groups else _quantized(proto)
    if quantized:
        raise UnsupportedModel(f"{_name(model)}: {quantized}: onnxprune prunes float weights; prune the float "
                               "model, then quantize it")
    if not analysis.costs:
        if analysis.subgraph_layers:
            where = ", ".join(f"'{n}'" for n in list(analysis.subgraph_layers)[:3])
            count = sum(analysis.subgraph_layers.values())
            raise UserError(f"{_name(model)}: its {count} Conv, Gemm or MatMul layers all lie inside subgraphs "
                            f"(of {where}), which onnxprune does not prune")
        raise UserError(f"{_name(model)}: {_why_no_layers(proto)}")
    return analysis


_QUANTIZED_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul",
                  "MatMulIntegerToFloat", "MatMulNBits", "QAttention")


def _layer_weights(proto: onnx.ModelProto) -> list[str | None]:
    """For every Conv, Gemm or MatMul: the op type that computes its weight (input 1), "graph inputs" when no
    node does, None when it has no weight input."""
    produced = {o: n.op_type for n in proto.graph.node for o in n.output}
    return [produced.get(n.input[1], "graph inputs") if len(n.input) > 1 else None for n in proto.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul")]


def _quantized(proto: onnx.ModelProto) -> str | None:
    """What makes the model a quantized one (QOperator ops, or layers whose weights come from DequantizeLinear),
    or None."""
    ops = sorted({n.op_type for n in proto.graph.node if n.op_type in _QUANTIZED_OPS})
    if ops:
        return f"a quantized model ({', '.join(ops)})"
    dequantized = _layer_weights(proto).count("DequantizeLinear")
    if dequantized:
        return (f"a QDQ-quantized model (the weights of {dequantized} Conv, Gemm or MatMul layers come from "
                "DequantizeLinear)")
    return None


def _why_no_layers(proto: onnx.ModelProto) -> str:
    """Why a model without a quantized layer has no layer to prune: their weights are computed, or there are none."""
    weights = _layer_weights(proto)
    if weights:
        sources = sorted({w for w in weights if w is not None})
        return (f"the weights of its {len(weights)} Conv, Gemm or MatMul layers are computed at run time (by "
                f"{', '.join(sources)}), not constants: onnxprune prunes layers with constant weights")
    return "has no Conv, Gemm or MatMul layer to prune"


def _calibration_shapes(proto: onnx.ModelProto, cal) -> dict | None:
    """Shapes of the inputs with symbolic dims, from the calibration data: the model's declared dims where
    fixed, the data's where symbolic, 1 for a symbolic batch (MACs are per sample)."""
    need = symbolic_inputs(proto)
    if not need:
        return None
    shapes = {}
    for name, dims in need.items():
        data = cal.parts[0].arrays[name].shape
        shapes[name] = tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else int(data[i]))
                             for i, d in enumerate(dims))
    return shapes


def _overrides(analysis: Analysis, keep: dict) -> dict[int, int]:
    out = {}
    for gid, n in keep.items():
        gid = int(gid)
        if not 0 <= gid < len(analysis.groups):
            raise OptionError("keep", f"{gid}={n}", f"no group {gid}")
        g = analysis.groups[gid]
        if g.frozen:
            raise OptionError("keep", f"{gid}={n}", f"group {gid} is frozen ({'; '.join(g.reasons)})")
        if not g.fewest <= n <= g.channels or n % g.multiple:
            raise OptionError("keep", f"{gid}={n}",
                              f"must be in {g.fewest}..{g.channels} and a multiple of {g.multiple}")
        out[gid] = int(n)
    return out


def apply_selection(analysis: Analysis, selection: Selection, masked: bool = False) -> onnx.ModelProto:
    """The pruned graph (or, with masked=True, the masked reference) for a selection."""
    keep, gamma = selection.class_arrays(analysis)
    return Rewriter(analysis, keep, gamma, masked=masked, replace=selection.replace).run()


def prune(model, calibration=None, *, method: str = _S.method, refit: str | None = _R.refit,
          keep_ratio: float | None = _T.keep_ratio, flops: float | None = _T.flops, params: float | None = _T.params,
          latency: float | None = _T.latency, round_to: int | str = _T.round_to, min_channels: int = _T.min_channels,
          keep: dict | None = None, provider: str = _T.provider, latency_batch: int = _T.latency_batch,
          latency_threads: int | None = _T.latency_threads, latency_fp16: bool = _T.latency_fp16,
          allocate: str = _T.allocate, norm: str = _S.norm, seed: int = _S.seed, batch_size: int = _C.batch_size,
          max_positions: int | None = _C.max_positions, holdout: float = _C.holdout, ridge: float = _R.ridge,
          residual_target: bool = _R.residual_target, refit_sweep: bool = _R.refit_sweep,
          bias_correction: bool = _R.bias_correction, preprocess: str = _C.preprocess,
          image_size: int | None = _C.image_size, augment: int = _C.augment, output_loss: str = _G.output_loss,
          global_samples: int = _G.global_samples, taylor_rounds: int = _G.taylor_rounds,
          exact_limit: int = _G.exact_limit, group_kind: str = _T.group_kind,
          token_mask_input: str = _C.token_mask_input, input_shapes: dict | None = _M.input_shapes,
          attention: str = _M.attention,
          distill: bool = _D.distill, distill_time: float = _D.distill_time,
          distill_epochs: int = _D.distill_epochs, distill_lr: float = _D.distill_lr,
          distill_features: float = _D.distill_features, distill_patience: int = _D.distill_patience,
          quiet: bool = True) -> tuple[onnx.ModelProto, Report]:
    """Prune a model (path or ModelProto) to a target; returns the pruned model and its report.

    `calibration`: a path (.npz/.npy file or folder, image folder), dict of arrays, iterable of input
    dicts or ONNX Runtime CalibrationDataReader. Needed by the greedy methods and by any re-fit.
    `refit`: none | gamma | full (default: full with calibration, none without). `residual_target`: a consumer
    whose output is added to a residual stream imitates the original sum (default on). `refit_sweep`: after every
    group is decided, their consumers are re-fitted once more on the network as pruned (default on; kept if the
    held-out output loss falls). `bias_correction`: after the
    full re-fit, the biases are shifted so the kept channels' calibration means are the original's (default on; kept
    if the held-out output loss falls).
    `allocate`: auto (output with calibration data, uniform without) | uniform | loss | output. `distill`:
    label-free distillation after pruning. `output_loss`: auto | kl | mse, the global methods' output
    discrepancy, measured on `global_samples`. `group_kind`: all |
    heads | channels, the groups pruned. `token_mask_input`: the input whose zeros mark padding tokens left out
    of the statistics. `latency`: keep that fraction of the original's latency, measured with ONNX Runtime on
    `provider` (cpu | cuda | tensorrt) at `latency_batch`. `round_to`: an integer, or 'auto' (per group, the
    rounding measured fastest). `input_shapes`: name -> dims (batch first) of inputs with symbolic dims, for
    the MACs of the layers they size (default: the first calibration batch's shapes); a MACs target is refused
    while a layer's MACs are unknown. `attention`: auto | heads | dims, whether attention blocks lose whole
    heads or dims within every head (dims needs calibration data; auto: dims with data where a block's dims
    prune, heads elsewhere). See `onnxprune.options` for every option."""
    options = PruneOptions.from_flat(
        method=method, refit=refit, keep_ratio=keep_ratio, flops=flops, params=params, latency=latency,
        round_to=round_to, provider=provider, latency_batch=latency_batch, latency_threads=latency_threads,
        latency_fp16=latency_fp16,
        min_channels=min_channels, keep=keep or {}, allocate=allocate, norm=norm, seed=seed, batch_size=batch_size,
        max_positions=max_positions, holdout=holdout, ridge=ridge, residual_target=residual_target,
        refit_sweep=refit_sweep, bias_correction=bias_correction,
        preprocess=preprocess, image_size=image_size, augment=augment, output_loss=output_loss,
        global_samples=global_samples, taylor_rounds=taylor_rounds,
        exact_limit=exact_limit, group_kind=group_kind, token_mask_input=token_mask_input, input_shapes=input_shapes,
        attention=attention,
        distill=distill, distill_time=distill_time, distill_epochs=distill_epochs, distill_lr=distill_lr,
        distill_features=distill_features, distill_patience=distill_patience)
    return prune_with_options(model, calibration, options, quiet=quiet)


def prune_with_options(model, calibration, options: PruneOptions, quiet: bool = True
                       ) -> tuple[onnx.ModelProto, Report]:
    """`prune` with its options already grouped."""
    from .calibration import load_calibration
    from .pipeline import GreedyPruner
    from .pipeline.budget import plan as plan_counts
    from .selection.methods import get_method
    target = options.target
    kind, fraction = target.check_one_target()
    method = get_method(options.selection.method)
    refit = options.refit.resolved(calibration is not None)
    if calibration is None and (method.needs_calibration or refit != Refit.NONE):
        raise OptionError("calibration", None, f"method {method.name} with refit {refit} needs calibration data; "
                          "magnitude or random with refit none prune without data")
    if target.allocate not in (Allocation.UNIFORM, Allocation.AUTO) and calibration is None:
        raise OptionError("allocate", target.allocate, "needs calibration data")
    if options.distill.distill and calibration is None:
        raise OptionError("distill", True, "needs calibration data")
    proto, name = _as_model(model)
    # what ONNX Runtime refuses it would refuse after pruning too; a file is read by ORT in place
    check_loads(model if isinstance(model, (str, os.PathLike)) else proto, name)
    c = options.calibration
    cal = None
    if calibration is not None:  # opened first: its first batch sizes inputs with symbolic dims
        cal = load_calibration(calibration, proto, c.holdout, c.preprocess, c.image_size, augment=c.augment,
                               seed=options.selection.seed)
    shapes = options.model.input_shapes or (_calibration_shapes(proto, cal) if cal is not None else None)
    attention = options.model.attention
    if attention == AttentionSplit.DIMS and cal is None:
        raise OptionError("attention", "dims", "needs calibration data (the Q·K dims are ordered by the data's "
                          "leading directions)")
    analysis = _analysis(proto, model, shapes, attention, calibrated=cal is not None)
    head_scores: dict = {}
    based: dict = {}
    head_basis = None
    if analysis.attention == "dims":
        assert cal is not None
        analysis, head_scores, based, head_basis = _rebased(analysis, cal, options, shapes, quiet)
        if head_basis.get("failed") and attention == AttentionSplit.AUTO:  # auto: heads, as without data
            log.warning("--attention auto: %s; attention blocks are read as heads", head_basis["failed"])
            analysis = Analysis(analysis.model, in_place=True, input_shapes=shapes)
            head_scores, based = {}, {}
        elif head_basis.get("failed"):
            raise UnsupportedModel(f"{name}: {head_basis['failed']}; prune with --attention heads")
    if kind == "flops" and analysis.unknown_costs:
        why = f"{name}: a MACs target needs every layer's MACs, and {analysis.unknown_cost_reason()}"
        if not analysis.input_shapes_would_help():
            raise UnsupportedModel(why)
        raise OptionError("input_shapes", None, why)
    if not analysis.prunable:
        raise UserError(f"{name}: every channel group is frozen; nothing to prune")
    overrides = _overrides(analysis, target.keep)
    if target.group_kind != GroupKind.ALL:  # the other kinds keep every channel (docs/DESIGN.md, "Attention heads")
        others = {g.id: g.channels for g in analysis.prunable if g.kind_of_run != target.group_kind}
        if len(others) == len(analysis.prunable):
            raise OptionError("group_kind", target.group_kind.value, f"{name} has no prunable group of that kind")
        overrides = {**others, **overrides}
    kept_whole = {gid: analysis.groups[gid].channels for gid in based}
    overrides = {**kept_whole, **overrides}
    n_cal = 0
    results, allocation, allocated = None, None, Allocation.UNIFORM
    token_mask = output_loss = swept = None
    if calibration is None:
        plan = plan_counts(analysis, target, overrides)
        selection = select(analysis, plan.counts, method.name, norm=options.selection.norm,
                           seed=options.selection.seed)
        if kind == "flops":
            fit_to_target(analysis, selection, selection.scores, fraction, target.min_channels,
                          round_to=1 if target.round_to == AUTO else int(target.round_to), widths=plan.widths)
    else:
        assert cal is not None
        options = dataclasses.replace(options, refit=dataclasses.replace(options.refit, refit=refit))
        pruner = GreedyPruner(analysis, cal, options, quiet=quiet, head_scores=head_scores)
        plan = plan_counts(analysis, target, overrides, pruner)
        selection = pruner.run(plan.counts)
        if refit == Refit.FULL and options.refit.refit_sweep:  # docs/DESIGN.md, "Re-fit sweep"
            from .pipeline.refit_sweep import refit_sweep as sweep
            swept = sweep(pruner, _loss_kind(analysis, options), quiet=quiet).to_dict()
        results, n_cal, allocation = pruner.results, cal.size, pruner.allocation
        allocated = pruner.allocated or Allocation.UNIFORM   # None: a keep-ratio target, nothing allocated
        token_mask, output_loss = pruner.token_mask, pruner.output_loss
    pruned = apply_selection(analysis, selection)
    corrected = None
    if cal is not None and refit == Refit.FULL and options.refit.bias_correction:  # docs/DESIGN.md, "Bias correction"
        from .bias_correction import correct_biases
        pruned, selection, bias_record = correct_biases(analysis, selection, pruned, cal, _loss_kind(analysis, options),
                                                        options.calibration.batch_size, quiet=quiet,
                                                        token_mask=token_mask)
        corrected = bias_record.to_dict()
    distilled = None
    if options.distill.distill:  # after the layer-wise pruning: docs/DESIGN.md, "Distillation"
        from .distill import distill, feature_channels
        assert cal is not None
        feats = feature_channels(analysis, selection, pruned)
        pruned, record = distill(analysis.model, pruned, cal, options.distill, feats, _loss_kind(analysis, options),
                                 options.calibration.batch_size, options.selection.seed, quiet=quiet)
        distilled = record.to_dict()
    measured = plan.finish(analysis, pruned)
    report = build_report(analysis, selection, pruned, name, method.name, {kind: fraction}, results)
    report.distill, report.allocation, report.bias_correction = distilled, allocation, corrected
    report.refit_sweep = swept
    report.refit, report.calibration_samples = str(refit), n_cal
    report.allocate = str(allocated)
    report.token_mask, report.output_loss = token_mask, output_loss
    report.fixed_batch = cal.fixed_batch if cal is not None else None
    report.attention, report.head_basis = _reading(analysis), head_basis
    report.latency = measured
    report.selection, report.analysis = selection, analysis
    return pruned, report


def _loss_kind(analysis: Analysis, options: PruneOptions) -> str:
    """The output loss (kl or mse) of the passes after the sequential one (`--output-loss`, auto resolved)."""
    from .graph.outputs import resolve_output_loss
    kind, _ = resolve_output_loss(analysis.model, options.global_imitation.output_loss)
    return str(kind)


def _reading(analysis: Analysis) -> str:
    """How the analysis read its attention blocks, for the report: heads, dims, or dims with some splits read
    as heads."""
    heads, dims = len(analysis.splits["heads"]), len(analysis.splits["dims"])
    if analysis.attention == "heads" or not dims:
        return "heads"
    return "dims" if not heads else f"dims ({heads} of {heads + dims} head splits read as heads)"


def _rebased(analysis: Analysis, cal, options: PruneOptions, shapes: dict | None, quiet: bool
             ) -> tuple[Analysis, dict, dict, dict]:
    """`--attention dims`: the analysis of the model with its dims within heads re-based on the calibration
    data (`pipeline.head_basis`), the Q·K dims groups' channel scores, and, per Q·K dims group that could not be
    re-based, why (it then keeps all its dims), and the report's record of it. The re-based model must compute
    what the original does: otherwise the analysis comes back as it was and the record says why ("failed")."""
    from .calibration.source import token_mask_input
    from .pipeline.head_basis import EXACT_TOLERANCE, rebase
    token_mask = token_mask_input(analysis.model, options.calibration.token_mask_input)
    done = rebase(analysis, cal, options.calibration.batch_size, token_mask, quiet)
    for gid, why in done.skipped.items():
        log.warning("group %d (Q·K dims) keeps all its dims: %s", gid, why)
    record: dict = {"qk_dims_groups": len(done.scores), "v_dims_groups": done.values, "output_change": done.change,
                    "kept_whole": {str(gid): why for gid, why in done.skipped.items()}}
    if done.model is None or done.change is None:
        return analysis, {}, done.skipped, record
    if not done.change <= EXACT_TOLERANCE:  # NaN too
        record["failed"] = f"re-basing the dims within heads changed the model's outputs by {done.change:.3g} " \
            "(relative)"
        return analysis, {}, done.skipped, record
    log.info("dims within heads re-based on the calibration data (%d Q·K dims and %d V dims groups; outputs "
             "changed by %.2g, relative)", len(done.scores), done.values, done.change)
    rebased = Analysis(done.model, in_place=True, input_shapes=shapes, attention="dims", heads_at=analysis.heads_at)
    return rebased, done.scores, done.skipped, record


def masked_reference(report: Report) -> onnx.ModelProto:
    """Original topology, removed channels' consumer slices zeroed, kept ones scaled by γ (or the
    re-fitted consumer weights)."""
    if report.analysis is None or report.selection is None:
        raise UserError("masked_reference needs the report of a run in this process (a loaded JSON has no selection)")
    return apply_selection(report.analysis, report.selection, masked=True)
