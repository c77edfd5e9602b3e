"""Cost model: multiply-accumulates (per sample) and parameters, before and after a selection."""
from __future__ import annotations

import numpy as np
import onnx

from .analysis import Analysis


def count_params(model: onnx.ModelProto) -> int:
    """Number of floating-point weight elements (integer shape constants are not parameters)."""
    total = 0
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                              onnx.TensorProto.BFLOAT16):
            total += int(np.prod(init.dims, dtype=np.int64))
    return total


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
