"""Parameter counts of a model."""
from __future__ import annotations

import numpy as np
import onnx

_FLOAT = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


def _graph_params(graph: onnx.GraphProto) -> int:
    total = 0
    for init in graph.initializer:
        if init.data_type in _FLOAT:
            total += int(np.prod(init.dims, dtype=np.int64))
    for node in graph.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type in _FLOAT:
                total += int(np.prod(a.t.dims, dtype=np.int64))
            if a.type == onnx.AttributeProto.GRAPH:
                total += _graph_params(a.g)
            for g in a.graphs:
                total += _graph_params(g)
    return total


def count_params(model: onnx.ModelProto) -> int:
    """Number of floating-point weight elements (integer shape constants are not parameters), over the
    whole model: initializers and `Constant` nodes of the main graph and of every subgraph (If, Loop, Scan
    bodies), each stored tensor once for each time the file stores it."""
    return _graph_params(model.graph)
