"""Models over protobuf's 2 GB limit cannot be serialised, so the ONNX checker and shape inference cannot
take them whole. Their structure can: `skeleton` swaps large initializers for graph inputs of the same
type and shape, which is all the checker and shape inference need of them."""
from __future__ import annotations

import onnx
from onnx import helper

LIMIT = 2**31 - 2**24       # leave room for the graph around the weights
LARGE = 1 << 20             # initializers above 1 MB become inputs in the skeleton


def tensor_bytes(t: onnx.TensorProto) -> int:
    return len(t.raw_data) + 4 * (len(t.float_data) + len(t.int32_data)) + 8 * (
        len(t.int64_data) + len(t.double_data) + len(t.uint64_data)) + sum(map(len, t.string_data))


def too_big(model: onnx.ModelProto) -> bool:
    """Whether serialising `model` would pass protobuf's limit (weights counted, structure estimated)."""
    inits = sum(tensor_bytes(t) for t in model.graph.initializer)
    return inits + sum(n.ByteSize() for n in model.graph.node) + 2**20 > LIMIT


def structure(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of everything but the main graph's initializers (no weight bytes are copied)."""
    m = onnx.ModelProto()
    m.ir_version, m.producer_name, m.producer_version = model.ir_version, model.producer_name, model.producer_version
    m.domain, m.model_version, m.doc_string = model.domain, model.model_version, model.doc_string
    m.opset_import.extend(model.opset_import)
    m.metadata_props.extend(model.metadata_props)
    m.functions.extend(model.functions)
    g = model.graph
    m.graph.name, m.graph.doc_string = g.name, g.doc_string
    m.graph.node.extend(g.node)
    m.graph.input.extend(g.input)
    m.graph.output.extend(g.output)
    m.graph.value_info.extend(g.value_info)
    m.graph.sparse_initializer.extend(g.sparse_initializer)
    return m


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose initializers over 1 MB are graph inputs (same dtype and dims) instead."""
    m = structure(model)
    listed = {v.name for v in model.graph.input}
    for t in model.graph.initializer:
        if tensor_bytes(t) > LARGE:
            if t.name not in listed:
                m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            m.graph.initializer.append(t)
    return m
