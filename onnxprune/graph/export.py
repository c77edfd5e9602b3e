"""Export an onnx-graphsurgeon graph as a model that keeps the original's model-level fields."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def finish(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph and restore the model-level fields of the original."""
    model = gs.export_onnx(graph, do_type_check=False)
    if [i.name for i in model.graph.input] != [i.name for i in like.graph.input]:
        del model.graph.input[:]  # initializers that are also inputs stay inputs (they are never edited)
        model.graph.input.extend(like.graph.input)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    del model.functions[:]
    model.functions.extend(like.functions)
    model.graph.name = like.graph.name
    return model
