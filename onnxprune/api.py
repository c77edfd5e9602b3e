"""The Python API that the command line wraps.

    model, report = onnxprune.prune("model.onnx", method="magnitude", flops=0.5)
"""
from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from .analysis import Analysis
from .cost import count_params, macs
from .errors import UserError
from .modelio import check_model, load_model
from .report import GroupReport, Report
from .rewrite import Rewriter
from .selection import Selection, counts_for_ratio, counts_for_target, fit_to_target, select

log = logging.getLogger("onnxprune")
METHODS = ("greedy-local", "greedy-convex", "gfs", "greedy-omp", "greedy-taylor", "greedy-global", "greedy-combined", "taylor",
           "magnitude", "random")


def _name(model) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else "<model>"


def _as_model(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        check_model(model)
        return model, _name(model)
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), _name(model)
    raise UserError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")


def analyze(model) -> Analysis:
    """Channel groups of a model (path or ModelProto; a ModelProto is not modified)."""
    proto, name = _as_model(model)
    analysis = Analysis(proto, in_place=proto is not model)  # a model loaded here is ours to change
    if not analysis.costs:
        raise UserError(f"{name}: has no Conv, Gemm or MatMul layer to prune")
    return analysis


def _overrides(analysis: Analysis, keep: dict) -> dict[int, int]:
    out = {}
    for gid, n in keep.items():
        gid = int(gid)
        if not 0 <= gid < len(analysis.groups):
            raise UserError(f"--keep {gid}={n}: no group {gid}")
        g = analysis.groups[gid]
        if g.frozen:
            raise UserError(f"--keep {gid}={n}: group {gid} is frozen ({'; '.join(g.reasons)})")
        if not g.fewest <= n <= g.channels or n % g.multiple:
            raise UserError(f"--keep {gid}={n}: must be in {g.fewest}..{g.channels} and a multiple of {g.multiple}")
        out[gid] = int(n)
    return out


def apply_selection(analysis: Analysis, selection: Selection, masked: bool = False) -> onnx.ModelProto:
    """The pruned graph (or, with masked=True, the masked reference) for a selection."""
    keep, gamma = selection.class_arrays(analysis)
    return Rewriter(analysis, keep, gamma, masked=masked, replace=selection.replace).run()


def build_report(analysis: Analysis, selection: Selection, pruned: onnx.ModelProto, name: str,
                 method: str, target: dict, results: dict | None = None) -> Report:
    keep, _ = selection.class_arrays(analysis)
    total = max(analysis.total_macs, 1)
    groups = []
    for g in analysis.groups:
        idx = selection.kept.get(g.id, np.arange(g.channels))
        gam = selection.gamma.get(g.id, np.ones(len(idx)))
        r = (results or {}).get(g.id)
        groups.append(GroupReport(g.id, g.channels, len(idx), [int(i) for i in idx],
                                  [float(x) for x in gam], g.frozen, g.reasons, g.producers, g.consumers,
                                  g.macs / total, None if g.frozen else (r.method if r else method),
                                  r.err_calib if r else None, r.err_holdout if r else None,
                                  list(r.curve) if r else [], r.note if r else ""))
    roots = analysis.class_of
    layers = [{"node": c.node, "op": c.op, "macs_before": c.macs,
               "macs_after": int(round(c.macs * np.prod([keep[roots[f]].mean() for f in c.factors])))}
              for c in analysis.costs]
    return Report(name, method, target, analysis.total_macs, macs(analysis, keep),
                  count_params(analysis.model), count_params(pruned), groups, layers=layers)


def prune(model, calibration=None, *, method: str = "greedy-local", refit: str | None = None,
          keep_ratio: float | None = None, flops: float | None = None, params: float | None = None,
          round_to: int = 1, min_channels: int = 1, keep: dict | None = None, allocate: str | None = None,
          norm: str = "l1", seed: int = 0, batch_size: int = 32, max_positions: int | None = 64,
          holdout: float = 0.1, ridge: float = 1e-3, preprocess: str = "none", image_size: int | None = None,
          output_loss: str = "kl", global_samples: int = 256, taylor_rounds: int = 4,
          quiet: bool = True) -> tuple[onnx.ModelProto, Report]:
    """Prune a model (path or ModelProto) to a target; returns the pruned model and its report.

    `calibration`: a path (.npz/.npy file or folder, image folder), dict of arrays, iterable of input
    dicts or ONNX Runtime CalibrationDataReader. Needed by the greedy methods and by any re-fit.
    `refit`: none | gamma | full (default: full with calibration, none without).
    `allocate`: uniform | loss (default: uniform).
    `output_loss`: kl | mse, the global methods' output discrepancy, measured on `global_samples`."""
    from .calibration import load_calibration
    from .pruner import GLOBAL, GREEDY, GreedyPruner, Options
    if method not in METHODS:
        raise UserError(f"--method {method}: unknown (choose from {', '.join(METHODS)})")
    if norm not in ("l1", "l2"):
        raise UserError(f"--norm {norm}: must be l1 or l2")
    refit = refit or ("full" if calibration is not None else "none")
    if calibration is None and (method in GREEDY + GLOBAL or refit != "none"):
        raise UserError(f"--method {method} --refit {refit} needs calibration data (--calib); "
                        "--method magnitude or random with --refit none prune without data")
    targets = [t for t in (keep_ratio, flops, params) if t is not None]
    if len(targets) != 1:
        raise UserError("give exactly one target: --keep-ratio, --flops or --params")
    # uniform by default: loss allocation (re-fit-aware curves) helped the Fashion-MNIST MobileNet and the ImageNet
    # MobileNetV2 at 90% MACs, but cost up to 6 points on ImageNet crops at 30% and a little on the ResNet
    # (bench/quality.py, bench/imagenet.py); it stays available
    allocate = allocate or "uniform"
    if allocate not in ("uniform", "loss"):
        raise UserError(f"--allocate {allocate}: choose uniform or loss")
    if allocate == "loss" and calibration is None:
        raise UserError("--allocate loss needs calibration data (--calib)")
    if round_to < 1 or min_channels < 1:
        raise UserError("--round-to and --min-channels must be >= 1")
    analysis = analyze(model)
    name = _name(model)
    if not analysis.prunable:
        raise UserError(f"{name}: every channel group is frozen; nothing to prune")
    overrides = _overrides(analysis, keep or {})
    what, fraction = ("flops", flops) if flops is not None else ("params", params)
    target = {"keep_ratio": keep_ratio} if keep_ratio is not None else {what: fraction}
    if keep_ratio is not None and not 0 < keep_ratio <= 1:
        raise UserError(f"--keep-ratio {keep_ratio}: must be in (0, 1]")
    results = None
    if calibration is None:
        if keep_ratio is not None:
            counts = counts_for_ratio(analysis, keep_ratio, round_to, min_channels, overrides)
        else:
            counts = counts_for_target(analysis, fraction, what, round_to, min_channels, overrides)
        selection = select(analysis, counts, method, norm=norm, seed=seed)
        if what == "flops" and keep_ratio is None:
            fit_to_target(analysis, selection, selection.scores, fraction, min_channels, round_to=round_to)
        n_cal = 0
    else:
        cal = load_calibration(calibration, analysis.model, holdout, preprocess, image_size)
        opts = Options(method, refit, batch_size, max_positions, ridge, seed, norm, quiet, output_loss,
                       global_samples, taylor_rounds)
        pruner = GreedyPruner(analysis, cal, opts)
        counts = pruner.counts(keep_ratio, fraction, what, allocate, round_to, min_channels, overrides)
        selection = pruner.run(counts)
        results, n_cal = pruner.results, cal.size
    pruned = apply_selection(analysis, selection)
    report = build_report(analysis, selection, pruned, name, method, target, results)
    report.refit, report.allocate, report.calibration_samples = refit, allocate, n_cal
    report.selection = selection
    report.analysis = analysis
    return pruned, report


def masked_reference(report: Report) -> onnx.ModelProto:
    """Original topology, removed channels' consumer slices zeroed, kept ones scaled by γ (or the
    re-fitted consumer weights)."""
    return apply_selection(report.analysis, report.selection, masked=True)
