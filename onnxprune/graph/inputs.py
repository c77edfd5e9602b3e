"""The run-time inputs a model declares: names, numpy dtypes and shapes."""
from __future__ import annotations

import numpy as np
import onnx

ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                 onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.INT64: np.int64,
                 onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT8: np.uint8,
                 onnx.TensorProto.INT8: np.int8, onnx.TensorProto.BOOL: np.bool_}


def model_inputs(model: onnx.ModelProto) -> dict[str, tuple]:
    """Run-time inputs: name -> (numpy dtype, shape with None for symbolic dims)."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        out[inp.name] = (ONNX_TO_NUMPY.get(tt.elem_type), shape)
    return out
