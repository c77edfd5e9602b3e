"""What a model's first output is: a class distribution (a classifier's logits or probabilities) or an
embedding (anything else), for the default output loss and `eval` metric (docs/DESIGN.md, "Output kind").

The output is a class distribution when it comes out of a Gemm, a MatMul with a constant weight (and its
bias Add) or a Conv, through ops that keep a score per class: Softmax, LogSoftmax, Sigmoid, pooling over
positions, flattening, squeezing, Relu, Dropout, Identity, Cast. Anything else (an L2 normalisation,
a LayerNorm, a masked mean pool, arithmetic with run-time tensors) makes it an embedding.
"""
from __future__ import annotations

import onnx

from ..options import OutputLossKind

DISTRIBUTION, EMBEDDING = "distribution", "embedding"
_PASS = {"Softmax", "LogSoftmax", "Sigmoid", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast",
         "Relu", "Dropout", "GlobalAveragePool", "GlobalMaxPool", "AveragePool", "MaxPool", "ReduceMean",
         "ReduceMax", "Transpose"}
_HEADS = {"Gemm", "Conv", "MatMul"}


def output_kind(model: onnx.ModelProto) -> tuple[str, str]:
    """(DISTRIBUTION or EMBEDDING, why) for the model's first output."""
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        if n.op_type == "Constant":
            consts.update(n.output)
    name = graph.output[0].name
    for _ in range(64):
        node = producer.get(name)
        if node is None:
            return EMBEDDING, f"output '{graph.output[0].name}' is not computed by a classifier head"
        op = node.op_type
        if op in _HEADS and (op != "MatMul" or (len(node.input) > 1 and node.input[1] in consts)):
            return DISTRIBUTION, f"output '{graph.output[0].name}' comes from {op} node '{node.name}'"
        if op == "Add" and len(node.input) == 2 and any(i in consts for i in node.input):
            name = next(i for i in node.input if i not in consts)  # a bias: look at what it is added to
            continue
        if op in _PASS and node.input:
            name = node.input[0]
            continue
        return EMBEDDING, f"output '{graph.output[0].name}' comes from {op} node '{node.name}', not a classifier head"
    return EMBEDDING, f"output '{graph.output[0].name}': no classifier head found"


def resolve_output_loss(model: onnx.ModelProto, requested: OutputLossKind) -> tuple[OutputLossKind, str]:
    """The output discrepancy the global methods and the distillation use: `requested`, or for auto KL when
    the first output is a class distribution and MSE otherwise; with the reason."""
    if requested != OutputLossKind.AUTO:
        return requested, "chosen by --output-loss"
    found, why = output_kind(model)
    return (OutputLossKind.KL if found == DISTRIBUTION else OutputLossKind.MSE), why
