"""Integer scalars that a graph computes at run time from tensor shapes.

Exporters compute Slice bounds and Reshape targets from `Shape` (TorchScript's `torch.chunk` gives
`Shape -> Gather -> Add(1) -> Div(2) -> Mul(j)`). `element` turns one element of such a tensor into an
`Expr`: a function of the dimensions it reads, so a handler can evaluate it at the sizes a pruned graph
would have and check that it follows the pruning."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .base import attr, axis_labels

MAX_DEPTH = 48
_INT_TYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


@dataclass
class Expr:
    """`fn(size)` gives the value, `size(tensor, axis)` the size of a dimension it reads."""
    fn: Callable[[Callable], float | int]
    dims: dict = field(default_factory=dict)  # (tensor name, axis) -> tensor

    def __call__(self, size: Callable) -> float | int:
        return self.fn(size)


def _const(v) -> Expr:
    v = v.item() if isinstance(v, np.generic) else v
    return Expr(lambda size: v)


def _combine(fn, *parts: Expr) -> Expr:
    dims = {}
    for p in parts:
        dims.update(p.dims)
    return Expr(lambda size: fn(*(p(size) for p in parts)), dims)


def _is_int(tensor, *operands) -> bool:
    dtype = getattr(tensor, "dtype", None)
    if dtype is not None:
        return np.dtype(dtype).type in _INT_TYPES
    return all(isinstance(o, int) for o in operands)


def _div(tensor):
    def fn(a, b):
        if b == 0:
            raise ZeroDivisionError
        if _is_int(tensor, a, b) and float(a).is_integer() and float(b).is_integer():
            q = abs(int(a)) // abs(int(b))  # ONNX integer Div truncates toward zero
            return q if (a >= 0) == (b >= 0) else -q
        return a / b
    return fn


_BINARY = {"Add": lambda t: lambda a, b: a + b, "Sub": lambda t: lambda a, b: a - b,
           "Mul": lambda t: lambda a, b: a * b, "Div": _div,
           "Max": lambda t: max, "Min": lambda t: min}
_UNARY = {"Floor": math.floor, "Ceil": math.ceil, "Neg": lambda a: -a, "Abs": abs}


def length(ctx, tensor) -> int | None:
    """Number of elements of a 0-D/1-D shape tensor, if known."""
    val = ctx.const(tensor)
    if val is not None:
        return int(val.size)
    shape = ctx.shape(tensor)
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape)) if shape else 1


def element(ctx, tensor, idx: int, depth: int = 0) -> Expr | None:
    """Element `idx` of an integer (or float) shape-derived tensor as an Expr, or None if it is not
    computed from constants and dimensions by the ops understood here."""
    if depth > MAX_DEPTH or tensor is None:
        return None
    val = ctx.const(tensor)
    if val is not None:
        flat = np.asarray(val).reshape(-1)
        return _const(flat[idx]) if 0 <= idx < len(flat) else None
    if not tensor.inputs:
        return None
    node = tensor.inputs[0]
    op, ins = node.op, node.inputs
    sub = lambda t, i: element(ctx, t, i, depth + 1)  # noqa: E731
    if op == "Shape":
        src = ins[0]
        rank = len(ctx.shape(src) or ())
        if not rank:
            return None
        axis = attr(node, "start", 0)
        axis = (axis % rank if axis < 0 else axis) + idx
        if axis >= rank:
            return None
        key = (src.name, axis)
        return Expr(lambda size: size(src, axis), {key: src})
    if op == "Gather" and attr(node, "axis", 0) == 0:
        ind = ctx.const(ins[1])
        if ind is None:
            return None
        flat = np.asarray(ind).reshape(-1)
        if not 0 <= idx < len(flat):
            return None
        n = length(ctx, ins[0])
        j = int(flat[idx])
        return sub(ins[0], j + n if j < 0 and n is not None else j) if j >= 0 or n is not None else None
    if op == "Concat":
        for t in ins:
            n = length(ctx, t)
            if n is None:
                return None
            if idx < n:
                return sub(t, idx)
            idx -= n
        return None
    if op == "Slice":  # of a 1-D shape tensor, constant bounds
        vals = [ctx.const(ins[i]) if len(ins) > i and not ins[i].is_empty() else None for i in range(1, 5)]
        n = length(ctx, ins[0])
        if vals[0] is None or vals[1] is None or n is None or any(
                len(ins) > i and not ins[i].is_empty() and vals[i - 1] is None for i in (3, 4)) or \
                (vals[2] is not None and [int(a) for a in np.reshape(vals[2], -1)] not in ([0], [-1])):
            return None
        step = int(np.reshape(vals[3], -1)[0]) if vals[3] is not None else 1
        picked = range(n)[slice(int(np.reshape(vals[0], -1)[0]), int(np.reshape(vals[1], -1)[0]), step)]
        return sub(ins[0], picked[idx]) if 0 <= idx < len(picked) else None
    if op in ("Unsqueeze", "Squeeze", "Identity", "Reshape", "Flatten"):
        return sub(ins[0], idx)
    if op == "Cast":
        inner = sub(ins[0], idx)
        if inner is None:
            return None
        to = np.dtype(getattr(tensor, "dtype", None) or np.int64).type
        return _combine(lambda a: int(a) if to in _INT_TYPES else float(a), inner)
    if op in _UNARY:
        inner = sub(ins[0], idx)
        return None if inner is None else _combine(_UNARY[op], inner)
    if op in _BINARY and len(ins) == 2:
        parts: list[Expr] = []
        for t in ins:
            n = length(ctx, t)
            part = sub(t, 0 if n == 1 else idx)
            if part is None:
                return None
            parts.append(part)
        return _combine(_BINARY[op](tensor), *parts)
    return None


def const_source(ctx, tensor, idx: int, depth: int = 0):
    """Where element `idx` of a shape tensor is written as a constant: (node, input index, element index)
    of the constant operand of the `Concat` that assembles it (through Cast/Identity), or None. Keras 3's
    Flatten is `Reshape(x, Concat(Slice(Shape(x)), [H·W·C]))`: its H·W·C is such an element."""
    if depth > MAX_DEPTH or tensor is None or ctx.const(tensor) is not None or not tensor.inputs:
        return None
    node = tensor.inputs[0]
    if node.op in ("Cast", "Identity"):
        return const_source(ctx, node.inputs[0], idx, depth + 1)
    if node.op != "Concat":
        return None
    found = concat_input_at(ctx, node, idx)
    if found is None:
        return None
    i, t, j, _ = found
    if ctx.const(t) is not None:
        return node, i, j
    return const_source(ctx, t, j, depth + 1)


def concat_input_at(ctx, node, idx: int) -> tuple | None:
    """(input index, input tensor, element index within it, its length) of the Concat `node`'s input that holds
    element `idx` of its output, or None when an input's length is unknown or `idx` is past the end."""
    for i, t in enumerate(node.inputs):
        n = length(ctx, t)
        if n is None:
            return None
        if idx < n:
            return i, t, idx, n
        idx -= n
    return None


def reads_no_channels(ctx, expr: Expr | None) -> bool:
    """Whether `expr` is computed without reading any dimension that holds channels (so it is the same at
    every selection)."""
    if expr is None:
        return False
    for (_, axis), tensor in expr.dims.items():
        lab = ctx.layout(tensor)
        if lab is not None and axis < lab.ndim and lab.shape[axis] > 1:
            return False
    return True


def freeze_read(ctx, node, labels, exprs, why: str) -> None:
    """Freeze `labels` and the channels of every tensor whose dimensions `exprs` read: a shape argument that
    does not follow the pruning must see the sizes it was computed for."""
    ctx.freeze(labels, node, why)
    for expr in exprs:
        for tensor in (expr.dims.values() if expr is not None else ()):
            if ctx.layout(tensor) is not None:
                ctx.freeze(ctx.layout(tensor), node, why)


def actual_size(ctx) -> Callable:
    """`size(tensor, axis)` of the unpruned graph (ValueError where shape inference does not know it)."""
    def size(tensor, axis):
        shape = ctx.shape(tensor)
        d = shape[axis] if shape is not None and axis < len(shape) else None
        if not isinstance(d, int):
            raise ValueError(f"size of {tensor.name} axis {axis} unknown")
        return d
    return size


def _multiplicity(roots: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The distinct channel classes of an axis and how often each occurs, if all occur equally often."""
    classes, counts = np.unique(roots, return_counts=True)
    if len(classes) and np.all(counts == counts[0]):
        return classes, int(counts[0])
    return (classes, 1) if not len(classes) else None


def pruned_sizes(ctx, vec: np.ndarray) -> Callable:
    """`at(kept)`: the dimension sizes once the axis `vec` keeps `kept` channels. A dimension holding the
    same channel classes, each r times where `vec` holds each m times (C channels reshaped to (g, C/g)
    with tied blocks: r = g, m = 1), has r·kept/m; one holding no channels keeps its size; for any other
    the size is not a function of `kept` (ValueError). What each dimension holds is worked out once, not
    per size."""
    roots = ctx.roots()
    mine = _multiplicity(roots[vec])
    actual = actual_size(ctx)
    held: dict = {}   # (tensor name, axis) -> ("fixed", size) | ("times", r) | ("other", None)

    def holds(tensor, axis):
        lab = ctx.layout(tensor)
        if lab is None or axis >= lab.ndim or lab.shape[axis] == 1:
            return "fixed", actual(tensor, axis)
        other = axis_labels(lab, axis, lab.shape[axis])
        theirs = None if other is None else _multiplicity(roots[other])
        if mine is not None and theirs is not None and np.array_equal(theirs[0], mine[0]):
            return "times", theirs[1]
        return "other", None

    def at(kept):
        def size(tensor, axis):
            key = (tensor.name, axis)
            if key not in held:
                held[key] = holds(tensor, axis)
            kind, value = held[key]
            if kind == "fixed":
                return value
            if kind == "times" and value * kept % mine[1] == 0:
                return value * kept // mine[1]
            raise ValueError(f"{tensor.name} axis {axis} holds other channels")
        return size
    return at


def follows(ctx, expr: Expr | None, vec: np.ndarray) -> bool:
    """Whether `expr` computes the size of an axis holding the channels `vec`, whatever is kept."""
    if expr is None:
        return False
    found = _multiplicity(ctx.roots()[vec])
    if found is None:
        return False
    classes, times = found
    sizes = pruned_sizes(ctx, vec)
    try:
        return all(expr(sizes(times * k)) == times * k for k in range(1, len(classes) + 1))
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return False


def concat_slot(ctx, tensor, idx: int, reader) -> tuple | None:
    """(Concat node, input index) of the one-element input that gives element `idx` of `tensor`, when
    `tensor` is that Concat's output (along axis 0) and `reader` is its only reader: the element can then
    be replaced by a constant without changing anything else."""
    if tensor is None or not tensor.inputs or len(tensor.outputs) != 1 or tensor.outputs[0] is not reader \
            or ctx.const(tensor) is not None:
        return None
    node = tensor.inputs[0]
    if node.op != "Concat" or attr(node, "axis", 0) != 0:
        return None
    found = concat_input_at(ctx, node, idx)
    if found is None:
        return None
    i, _, _, n = found
    return (node, i) if n == 1 else None
