"""Export an onnx-graphsurgeon graph as a model that keeps the original's model-level fields."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def _subgraphs(graph: onnx.GraphProto):
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield a.g
                yield from _subgraphs(a.g)
            for g in a.graphs:
                yield g
                yield from _subgraphs(g)


def share_initializers(model: onnx.ModelProto, like: onnx.ModelProto) -> None:
    """graphsurgeon writes every constant a subgraph reads into that subgraph's initializers, so a weight of
    the main graph read in both branches of an `If` would be stored three times. A subgraph initializer that
    is a main-graph initializer of `like`, or that several graphs hold, is kept once, in the main graph
    (names are unique across scopes, so the subgraphs still find it; docs/DESIGN.md, "Subgraphs")."""
    subs = list(_subgraphs(model.graph))
    if not subs:
        return
    main = {t.name for t in model.graph.initializer}
    outer = {t.name for t in like.graph.initializer}
    seen: dict[str, int] = {}
    for g in subs:
        for t in g.initializer:
            seen[t.name] = seen.get(t.name, 0) + 1
    hoist = {n for n, k in seen.items() if n in main or n in outer or k > 1}
    for g in subs:
        keep = [t for t in g.initializer if t.name not in hoist]
        for t in g.initializer:
            if t.name in hoist and t.name not in main:
                model.graph.initializer.append(t)
                main.add(t.name)
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)


def finish(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export a graph and restore the model-level fields of the original."""
    model = gs.export_onnx(graph, do_type_check=False)
    share_initializers(model, like)
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
