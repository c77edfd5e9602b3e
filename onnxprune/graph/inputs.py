"""The run-time inputs a model declares: names, numpy dtypes and shapes."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import UserError

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


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size every run of `model` takes: the fixed first dimension its run-time inputs declare (an
    export without a dynamic batch axis), or None when every first dimension is symbolic. Inputs that declare
    different fixed first dimensions cannot all be batch first: refused. See docs/DESIGN.md, "Fixed batch"."""
    fixed = {name: shape[0] for name, (_, shape) in model_inputs(model).items() if shape and shape[0] is not None}
    if len(set(fixed.values())) > 1:
        raise UserError("the model's inputs declare different fixed first dimensions ("
                        + ", ".join(f"'{k}': {v}" for k, v in fixed.items())
                        + "); every input's first dimension is its batch dimension")
    return next(iter(fixed.values()), None) or None


def declared_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Run-time inputs: name -> dims as declared (int, the symbol's name, or '?' for an unnamed one)."""
    inits = {i.name for i in model.graph.initializer}
    return {inp.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                       for d in inp.type.tensor_type.shape.dim]
            for inp in model.graph.input if inp.name not in inits}


def symbolic_inputs(model: onnx.ModelProto) -> dict[str, list]:
    """Inputs with a symbolic dimension after the first (the batch): their declared dims."""
    return {n: dims for n, dims in declared_dims(model).items() if any(not isinstance(d, int) for d in dims[1:])}


def resolve_input_shapes(model: onnx.ModelProto, shapes: dict) -> dict[str, tuple[int, ...]]:
    """Check given input shapes (name -> dims; the name None for a single-input model) against the model's
    declared inputs: names, ranks and fixed dimensions must match. See docs/DESIGN.md, "Input shapes"."""
    from ..options import OptionError
    declared = declared_dims(model)
    out = {}
    for name, dims in shapes.items():
        shown = f"{name}={','.join(map(str, dims))}" if name is not None else ",".join(map(str, dims))
        if name is None:
            if len(declared) != 1:
                raise OptionError("input_shapes", shown, f"the model has {len(declared)} inputs "
                                  f"({', '.join(declared)}): name the input, NAME=D0,D1,...")
            name = next(iter(declared))
        if name not in declared:
            raise OptionError("input_shapes", shown, f"the model has no input '{name}' (inputs: "
                              f"{', '.join(declared) or 'none'})")
        want = declared[name]
        if len(dims) != len(want):
            raise OptionError("input_shapes", shown, f"input '{name}' has rank {len(want)} {_shown(want)}, "
                              f"the shape gives {len(dims)} dimensions")
        for i, (d, w) in enumerate(zip(dims, want)):
            if isinstance(w, int) and w > 0 and d != w:
                raise OptionError("input_shapes", shown, f"input '{name}' has dimension {i} fixed to {w} "
                                  f"{_shown(want)}")
        out[name] = tuple(int(d) for d in dims)
    return out


def _shown(dims: list) -> str:
    return "[" + ", ".join(map(str, dims)) + "]"
