"""MACs (multiply-accumulates per sample) of a model, before and after a selection."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import UserError
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


def model_macs(model: onnx.ModelProto, input_shapes: dict | None = None) -> int:
    """MACs of a (pruned) model, measured by analysing it afresh; refused while a layer's size is unknown
    (give `input_shapes` for inputs with symbolic dims)."""
    a = Analysis(model, input_shapes=input_shapes)
    if a.unknown_costs:
        raise UserError(a.unknown_cost_reason())
    return macs(a)
