"""The working graph: a normalised onnx-graphsurgeon copy of the user's model.

Normalisation (done once, before analysis, and the basis of every rewrite):
- constant subexpressions are folded (`fold_constants`: a bias written `Reshape(Constant, Constant)` is a
  constant, an `If` with a constant condition is its taken branch);
- `Constant` nodes with a tensor value, and `Identity` nodes of constants, become constant tensors
  (weights are weights, wherever they live);
- where every initializer is also listed as a graph input (IR 3 models, `keep_initializers_as_inputs=True`
  exports), they are weights and leave the inputs; an initializer listed alone stays an overridable input;
- every node gets a unique name (unnamed nodes are named `<op>_<index>`), so reports can name them;
- shapes are inferred with ONNX shape inference (symbolic batch dimension kept symbolic).
"""
from __future__ import annotations

import contextlib
import io
import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from .skeleton import LARGE, skeleton, tensor_bytes

log = logging.getLogger("onnxprune")


def normalise(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Return a normalised copy of `model` (the input is not modified), or `model` itself normalised
    when `in_place` (saves a copy of the weights when the caller owns it)."""
    m = model if in_place else onnx.ModelProto()
    if not in_place:
        m.CopyFrom(model)
    _initializers_are_not_inputs(m)
    m = fold_constants(m)
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


def _initializers_are_not_inputs(model: onnx.ModelProto) -> None:
    """IR-3-style models list every initializer as a graph input too (IR < 4 requires it; torch's
    keep_initializers_as_inputs=True writes it at any IR): those inputs are weights, not for callers to feed,
    and leave the inputs. Taken as inputs, every weight would be a run-time tensor and every layer frozen. Where
    only some initializers are listed (IR >= 4), each is a default a caller may override: it stays an input,
    and the layers reading it stay frozen."""
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    listed = {v.name for v in graph.input if v.name in inits}
    if not listed or (model.ir_version >= 4 and listed != inits):
        return
    log.info("every initializer is also listed as a graph input (IR 3 style): the %d are read as weights, and "
             "the pruned model does not list them as inputs", len(listed))
    kept = [v for v in graph.input if v.name not in inits]
    del graph.input[:]
    graph.input.extend(kept)


# ops whose value is not a function of their inputs (folding them would fix one draw), or that a
# quantised model keeps as they are
_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
            "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
SHARED = 1 << 14


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        yield from a.graphs


def _foldable(graph: onnx.GraphProto, outer: set[str]) -> bool:
    """Whether some node of `graph` (or of a subgraph) computes from constants only, or is an `If` whose
    condition is a constant: a linear pass that spares the common model a round trip through graphsurgeon."""
    const = set(outer) | {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if node.op_type == "Constant":
            const.update(node.output)
            continue
        ins = [i for i in node.input if i]
        if node.op_type not in _NO_FOLD and node.domain in ("", "ai.onnx") and (
                (ins and all(i in const for i in ins) and not set(node.output) & outputs)
                or (node.op_type == "If" and ins and ins[0] in const)):
            return True
        for sub in _subgraphs(node):
            if _foldable(sub, const):
                return True
    return False


def fold_constants(m: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subexpressions with onnx-graphsurgeon (evaluated by ONNX Runtime): exporters write
    conv biases as `Add(Conv, Reshape(Constant, Constant))` (paddle2onnx at opset 11), which the
    analyzer would otherwise take for run-time tensors. Nothing over `LARGE` bytes is folded (so no large
    weight is ever duplicated), shapes are not folded (the model's run-time shape arithmetic stays as it
    is), random and quantisation ops stay, and graph outputs are never turned into constants. The
    model's interface, opset and fields are those of `m` (docs/DESIGN.md, "Normalisation")."""
    if not _foldable(m.graph, set()):
        return m
    from .export import finish
    graph = gs.import_onnx(m)
    outputs = {t.name for t in graph.outputs}

    def exclude(node) -> bool:
        """Random and quantisation ops, custom domains, graph outputs; and a node reading a weight (a floating
        constant, or any over `SHARED` bytes) that something else reads too: a slice of a shared weight
        would be a second copy of it."""
        return node.op in _NO_FOLD or bool(node.domain not in (None, "", "ai.onnx")) or \
            any(t.name in outputs for t in node.outputs) or \
            any(isinstance(t, gs.Constant) and len(t.outputs) > 1 and (
                np.issubdtype(t.dtype, np.floating) or t._values.nbytes > SHARED) for t in node.inputs)
    logger = gs.logger.G_LOGGER
    severity = logger.severity
    try:
        graph.toposort()
        logger.severity = logger.ERROR  # a warning per node it cannot evaluate: expected here
        ort.set_default_logger_severity(3)  # and ONNX Runtime's optimiser warnings on the folded parts
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            _fold(graph, exclude)
        graph.cleanup(remove_unused_graph_inputs=False)
    except Exception:  # folding is an optimisation: a graph it cannot handle is analysed as it is
        return m
    finally:
        logger.severity = severity
        ort.set_default_logger_severity(2)  # ONNX Runtime's default
    return finish(graph, m)  # value_info: graphsurgeon exports only the tensors that stay variables


def _fold(graph: gs.Graph, exclude) -> None:
    """graphsurgeon's folding, recursing into subgraphs here (its own recursion drops `should_exclude_node`):
    this graph first (its constants become visible inside), then each subgraph, then a pass that inlines
    the `If`s whose condition is now a constant."""
    args = dict(fold_shapes=False, partitioning="basic", error_ok=True, size_threshold=LARGE,
                should_exclude_node=exclude, recurse_subgraphs=False, recurse_functions=False)
    graph.fold_constants(flatten_subgraphs=False, **args)
    subs = [sub for node in graph.nodes for sub in node.subgraphs()]
    for sub in subs:
        _fold(sub, exclude)
    if any(node.op == "If" and isinstance(node.inputs[0], gs.Constant) for node in graph.nodes):
        graph.fold_constants(flatten_subgraphs=True, **args)


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


def _ssi_work(graph: onnx.GraphProto) -> tuple[int, int]:
    """(nodes, worst-case node visits of ONNX Runtime's symbolic shape inference). It infers both branches
    of an `If`, and when it knows the condition it first copies the taken branch over the other: nested
    `If`s whose conditions it can compute (from static shapes) cost twice per level."""
    nodes = work = 0
    for node in graph.node:
        nodes += 1
        work += 1
        subs = [_ssi_work(g) for g in _subgraphs(node)]
        nodes += sum(n for n, _ in subs)
        if node.op_type == "If" and subs:
            work += 2 * max(w for _, w in subs)
        else:
            work += 2 * sum(w for _, w in subs)  # Loop/Scan bodies may be inferred twice
    return nodes, work


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
    nodes, work = _ssi_work(m.graph)
    if work > 4 * nodes + 64:  # exponential in the nesting depth: ONNX's own inference is linear
        return _onnx_infer(m)
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            out = SymbolicShapeInference.infer_shapes(m, auto_merge=True, guess_output_rank=True)
        if out is not None:
            return out
    except Exception:
        pass
    return _onnx_infer(m)


def _onnx_infer(m: onnx.ModelProto) -> onnx.ModelProto:
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

