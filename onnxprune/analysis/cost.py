"""MACs (multiply-accumulates per sample) of a model, before and after a selection."""
from __future__ import annotations

import numpy as np
import onnx

from .analyzer import Analysis


def macs(analysis: Analysis, keep: np.ndarray | None = None) -> int:
    """Total MACs; with `keep` (per class), each node's MACs scale by the kept share of each factor."""
    total = 0.0
    roots = analysis.class_of
    for cost in analysis.costs:
        m = float(cost.macs)
        if keep is not None:
            for f in cost.factors:
                m *= float(keep[roots[f]].mean())
        total += m
    return int(round(total))


def model_macs(model: onnx.ModelProto) -> int:
    """MACs of a (pruned) model, measured by analysing it afresh."""
    return macs(Analysis(model))
