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
from .selection import Selection, counts_for_flops, counts_for_ratio, select

log = logging.getLogger("onnxprune")
METHODS = ("magnitude", "random")


def _as_model(model) -> tuple[onnx.ModelProto, str]:
    if isinstance(model, onnx.ModelProto):
        check_model(model)
        return model, "<model>"
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), str(model)
    raise UserError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")


def analyze(model) -> Analysis:
    """Channel groups of a model (path or ModelProto)."""
    proto, name = _as_model(model)
    analysis = Analysis(proto)
    if not analysis.costs:
        raise UserError(f"{name}: has no Conv, Gemm or MatMul layer to prune")
    return analysis


def target_counts(analysis: Analysis, keep_ratio=None, flops=None, round_to=1, min_channels=1,
                  keep=None) -> tuple[dict[int, int], dict]:
    """Kept channel count per prunable group for a target (exactly one of keep_ratio, flops)."""
    if (keep_ratio is None) == (flops is None):
        raise UserError("give exactly one target: --keep-ratio or --flops")
    if round_to < 1:
        raise UserError(f"--round-to {round_to}: must be >= 1")
    if min_channels < 1:
        raise UserError(f"--min-channels {min_channels}: must be >= 1")
    overrides = _overrides(analysis, keep or {})
    if keep_ratio is not None:
        if not 0 < keep_ratio <= 1:
            raise UserError(f"--keep-ratio {keep_ratio}: must be in (0, 1]")
        return counts_for_ratio(analysis, keep_ratio, round_to, min_channels, overrides), \
            {"keep_ratio": keep_ratio}
    return counts_for_flops(analysis, flops, round_to, min_channels, overrides), {"flops": flops}


def _overrides(analysis: Analysis, keep: dict) -> dict[int, int]:
    out = {}
    for gid, n in keep.items():
        gid = int(gid)
        if not 0 <= gid < len(analysis.groups):
            raise UserError(f"--keep {gid}={n}: no group {gid}")
        g = analysis.groups[gid]
        if g.frozen:
            raise UserError(f"--keep {gid}={n}: group {gid} is frozen ({'; '.join(g.reasons)})")
        if not 1 <= n <= g.channels or n % g.n_blocks:
            raise UserError(f"--keep {gid}={n}: must be in 1..{g.channels} and a multiple of {g.n_blocks}")
        out[gid] = int(n)
    return out


def apply_selection(analysis: Analysis, selection: Selection, masked: bool = False) -> onnx.ModelProto:
    """The pruned graph (or, with masked=True, the masked reference) for a selection."""
    keep, gamma = selection.class_arrays(analysis)
    return Rewriter(analysis, keep, gamma, masked=masked).run()


def build_report(analysis: Analysis, selection: Selection, pruned: onnx.ModelProto, name: str,
                 method: str, target: dict) -> Report:
    keep, _ = selection.class_arrays(analysis)
    total = max(analysis.total_macs, 1)
    groups = []
    for g in analysis.groups:
        idx = selection.kept.get(g.id, np.arange(g.channels))
        gam = selection.gamma.get(g.id, np.ones(len(idx)))
        groups.append(GroupReport(g.id, g.channels, len(idx), [int(i) for i in idx],
                                  [float(x) for x in gam], g.frozen, g.reasons, g.producers, g.consumers,
                                  g.macs / total, None if g.frozen else method))
    return Report(name, method, target, analysis.total_macs, macs(analysis, keep),
                  count_params(analysis.model), count_params(pruned), groups)


def prune(model, calibration=None, *, method: str = "magnitude", keep_ratio: float | None = None,
          flops: float | None = None, round_to: int = 1, min_channels: int = 1, keep: dict | None = None,
          norm: str = "l1", seed: int = 0) -> tuple[onnx.ModelProto, Report]:
    """Prune a model (path or ModelProto) to a target; returns the pruned model and its report."""
    if method not in METHODS:
        raise UserError(f"--method {method}: unknown (choose from {', '.join(METHODS)})")
    if norm not in ("l1", "l2"):
        raise UserError(f"--norm {norm}: must be l1 or l2")
    proto, name = _as_model(model)
    analysis = analyze(proto)
    if not analysis.prunable:
        raise UserError(f"{name}: every channel group is frozen; nothing to prune")
    counts, target = target_counts(analysis, keep_ratio, flops, round_to, min_channels, keep)
    selection = select(analysis, counts, method, norm=norm, seed=seed)
    pruned = apply_selection(analysis, selection)
    report = build_report(analysis, selection, pruned, name, method, target)
    report.selection = selection
    report.analysis = analysis
    return pruned, report


def masked_reference(report: Report) -> onnx.ModelProto:
    """Original topology, removed channels' consumer slices zeroed, kept ones scaled by γ."""
    return apply_selection(report.analysis, report.selection, masked=True)
