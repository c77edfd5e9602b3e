"""Parameter counts of a model."""
from __future__ import annotations

import numpy as np
import onnx


def count_params(model: onnx.ModelProto) -> int:
    """Number of floating-point weight elements (integer shape constants are not parameters)."""
    total = 0
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                              onnx.TensorProto.BFLOAT16):
            total += int(np.prod(init.dims, dtype=np.int64))
    return total
