"""A twin whose weights are trainable: the float constants of Conv, ConvTranspose, Gemm and MatMul nodes
(weights and biases, and the constant operand of an Add that directly follows a MatMul, its bias) become
shared `torch.nn.Parameter`s, and `write_back` returns the model with the trained values (used by
`finetune` and `distill`; see `onnxprune.finetune` for what is trained and what stays frozen).

The model may store a weight as an initializer, as a `Constant` node, or behind `Identity` nodes
(exporters deduplicate equal initializers this way); the analyzer's normalised graph turns the last two
into initializers named after the node outputs. Every trainable tensor of the normalised graph is traced
back to its storage in the original model, and tensors sharing one storage share one parameter, so the
written-back model stays consistent. Initializers that are also graph inputs (overridable at run time)
are not trained.
"""
from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..analysis import Analysis
from .interpreter import Twin

_WEIGHT_OPS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1)}
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- where weights live
def _storage_map(model: onnx.ModelProto) -> dict[str, tuple]:
    """Tensor name in the normalised graph -> its storage in `model`:
    ("init", initializer name) or ("constant", node index). Follows Identity chains."""
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, tuple] = {n: ("init", n) for n in inits}
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            out[node.output[0]] = ("constant", i)
        elif node.op_type == "Identity" and node.input and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def _storage_array(model: onnx.ModelProto, key: tuple) -> tuple[np.ndarray, int]:
    if key[0] == "init":
        t = next(t for t in model.graph.initializer if t.name == key[1])
    else:
        t = model.graph.node[key[1]].attribute[0].t
    return numpy_helper.to_array(t), t.data_type


def _write(model: onnx.ModelProto, key: tuple, value: np.ndarray) -> None:
    if key[0] == "init":
        t = next(t for t in model.graph.initializer if t.name == key[1])
    else:
        t = model.graph.node[key[1]].attribute[0].t
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    new = numpy_helper.from_array(np.asarray(value).astype(dtype, copy=False).reshape(tuple(t.dims)), t.name)
    t.ClearField("external_data")
    t.data_location = onnx.TensorProto.DEFAULT
    t.CopyFrom(new)


def trainable_tensors(analysis: Analysis) -> list[str]:
    """Names (in the normalised graph) of the float constants `finetune` trains."""
    import onnx_graphsurgeon as gs
    overridable = analysis.overridable
    names: list[str] = []

    def take(t):
        if isinstance(t, gs.Constant) and t.name not in overridable and t.name not in names \
                and np.asarray(t.values).dtype.kind == "f":
            names.append(t.name)

    for node in analysis.graph.nodes:
        if node.op in _WEIGHT_OPS:
            for i in _WEIGHT_OPS[node.op]:
                if i < len(node.inputs):
                    take(node.inputs[i])
        elif node.op == "Add" and len(node.inputs) == 2:
            for i, t in enumerate(node.inputs):
                other = node.inputs[1 - i]
                if isinstance(t, gs.Constant) and not isinstance(other, gs.Constant) and other.inputs \
                        and other.inputs[0].op == "MatMul":
                    take(t)
    return names


class Trainable:
    """A twin whose weight buffers are replaced by shared nn.Parameters, and the write-back."""

    def __init__(self, model: onnx.ModelProto, device, dtype):
        self.model = model
        self.analysis = Analysis(model)
        self.twin = Twin(self.analysis, device=device, dtype=dtype)
        storage = _storage_map(model)
        self.params: dict[tuple, torch.nn.Parameter] = {}
        self.names: dict[tuple, list[str]] = {}
        self.initial: dict[tuple, torch.Tensor] = {}
        for name in trainable_tensors(self.analysis):
            key = storage.get(name)
            if key is None or name not in self.twin._consts:
                raise RuntimeError(f"finetune: cannot trace weight '{name}' back to the model")
            buf = self.twin._consts[name]
            value = getattr(self.twin, buf)
            if key not in self.params:
                self.params[key] = torch.nn.Parameter(value.detach().clone())
            elif self.params[key].shape != value.shape:
                raise RuntimeError(f"finetune: '{name}' shares storage with a tensor of another shape")
            self.initial.setdefault(key, value.detach().clone())
            del self.twin._buffers[buf]
            self.twin.register_parameter(buf, self.params[key])
            self.names.setdefault(key, []).append(name)

    def write_back(self) -> onnx.ModelProto:
        """A copy of the model with the trained values; tensors whose parameter did not change keep
        their stored bytes (so lr=0 is exactly the identity, whatever the model's float type)."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        for key, p in self.params.items():
            if not torch.equal(p.detach(), self.initial[key]):
                _write(out, key, p.detach().cpu().numpy())
        return out


