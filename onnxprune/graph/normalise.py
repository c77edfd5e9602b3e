"""The working graph: a normalised onnx-graphsurgeon copy of the user's model.

Normalisation (done once, before analysis, and the basis of every rewrite):
- `Constant` nodes with a tensor value, and `Identity` nodes of constants, become constant tensors
  (weights are weights, wherever they live);
- every node gets a unique name (unnamed nodes are named `<op>_<index>`), so reports can name them;
- shapes are inferred with ONNX shape inference (symbolic batch dimension kept symbolic).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .skeleton import LARGE, skeleton, tensor_bytes


def normalise(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Return a normalised copy of `model` (the input is not modified), or `model` itself normalised
    when `in_place` (saves a copy of the weights when the caller owns it)."""
    m = model if in_place else onnx.ModelProto()
    if not in_place:
        m.CopyFrom(model)
    graph = m.graph
    kept_nodes, new_inits = [], []
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            # exporters pass shared weights through Identity nodes: the output is a weight too
            t = onnx.TensorProto()
            t.CopyFrom(inits[node.input[0]])
            t.name = node.output[0]
            new_inits.append(t)
            inits[t.name] = t
            continue
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            new_inits.append(t)
            inits[t.name] = t
        else:
            kept_nodes.append(node)
    if new_inits:
        del graph.node[:]
        graph.node.extend(kept_nodes)
        graph.initializer.extend(new_inits)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)
    inferred = infer_shapes(m)
    # the interface is the user's: shape inference must not rename or refine input/output dims
    if inferred is not m:  # else shapes were only added as value_info
        for field in ("input", "output"):
            del getattr(inferred.graph, field)[:]
            getattr(inferred.graph, field).extend(getattr(m.graph, field))
    io_names = {v.name for v in m.graph.input} | {v.name for v in m.graph.output}
    kept = [v for v in inferred.graph.value_info if v.name not in io_names]
    del inferred.graph.value_info[:]
    inferred.graph.value_info.extend(kept)
    return inferred


def infer_shapes(m: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's symbolic shape inference (it follows shapes computed at run time, e.g.
    `x.view(x.size(0), -1)`), falling back to ONNX's; best effort, since handlers freeze what
    lacks a shape. Models with large weights get the shapes of their structure, in place."""
    if any(tensor_bytes(t) > LARGE for t in m.graph.initializer):
        # infer on the structure (large weights as inputs: serialising them costs copies, and fails
        # over 2 GB), then give the shapes to the whole model
        shaped = _infer(skeleton(m))
        del m.graph.value_info[:]
        m.graph.value_info.extend(shaped.graph.value_info)
        return m
    return _infer(m)


def fixed_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
    """The shape of every tensor, inferred with the given inputs fixed to `shapes` (ONNX Runtime's symbolic
    shape inference, as `infer_shapes`), symbolic dims left as None. The model is not changed: these shapes
    only size the layers for their MACs (docs/DESIGN.md, "Input shapes")."""
    m = skeleton(model)  # the structure and the small constants shape inference reads
    del m.graph.value_info[:]
    for inp in m.graph.input:
        if inp.name in shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, v in zip(dims, shapes[inp.name]):
                d.Clear()
                d.dim_value = int(v)
    inferred = _infer(m)
    out: dict[str, tuple] = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return out


def _infer(m: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            out = SymbolicShapeInference.infer_shapes(m, auto_merge=True, guess_output_rank=True)
        if out is not None:
            return out
    except Exception:
        pass
    try:
        return onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return m


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def const_value(tensor) -> np.ndarray | None:
    """The numpy value of a constant tensor, or None for a run-time tensor."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def static_shape(tensor) -> tuple | None:
    """Tensor shape with symbolic dimensions as None; None when the rank is unknown."""
    shape = getattr(tensor, "shape", None)
    if shape is None:
        return None
    return tuple(d if isinstance(d, (int, np.integer)) and d >= 0 else None for d in shape)

