"""One node as the twin's interpreter runs it: its attributes, inputs, outputs and opset."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs
import torch

if TYPE_CHECKING:
    from .interpreter import Twin


class Step:
    """One node as the interpreter runs it."""

    def __init__(self, index: int, node: gs.Node, fn: Callable, opset: int, twin: Twin):
        self.index, self.name, self.op = index, node.name, node.op
        self.fn, self.opset, self.twin = fn, opset, twin
        self.attrs = dict(node.attrs)
        # each input: None (absent), ("var", name) or ("const", buffer name)
        self.inputs: list[tuple[str, str] | None] = []
        self.outputs = [t.name if not t.is_empty() else "" for t in node.outputs]

    def attr(self, name, default=None):
        return self.attrs.get(name, default)

    @property
    def n_out(self) -> int:
        return len(self.outputs)

    def wants(self, i: int) -> bool:
        return i < len(self.outputs) and self.outputs[i] != ""

    def float_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.twin.float_dtype if self.twin.float_dtype is not None and dtype.is_floating_point else dtype

    def fail(self, what: str):
        raise NotImplementedError(f"Twin: {self.op} node '{self.name}': {what} is not supported")


