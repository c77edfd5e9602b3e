"""Ops that move or compute shapes: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, DepthToSpace,
SpaceToDepth, Shape, Size, Gather,
ConstantOfShape, Constant, Expand, Tile, Range, CumSum, Trilu, NonZero (as `analysis/handlers/shape.py`)."""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs
import torch

from . import op
from .base import input_or_attr, ints, opt, to_torch


@op("Flatten")
def _flatten(s, ins):
    x = ins[0]
    axis = s.attr("axis", 1)
    axis = axis % x.dim() if axis < 0 else axis
    return x.reshape(int(math.prod(x.shape[:axis])), int(math.prod(x.shape[axis:])))


@op("Reshape")
def _reshape(s, ins):
    x = ins[0]
    shape = list(s.attr("shape")) if s.opset < 5 else ints(ins[1])
    if not s.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@op("Transpose")
def _transpose(s, ins):
    x = ins[0]
    perm = s.attr("perm", None)
    perm = list(reversed(range(x.dim()))) if perm is None else list(perm)
    return x.permute(perm)


@op("Squeeze")
def _squeeze(s, ins):
    x = ins[0]
    axes = input_or_attr(s, ins, 1, "axes")
    if not axes:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted({a % x.dim() for a in axes}, reverse=True)
    for a in axes:
        x = x.squeeze(a)
    return x


@op("Unsqueeze")
def _unsqueeze(s, ins):
    x = ins[0]
    axes = input_or_attr(s, ins, 1, "axes")
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x




@op("DepthToSpace")
def _depth_to_space(s, ins):
    x = ins[0]
    b, c, h, w = x.shape
    k = int(s.attr("blocksize"))
    mode = s.attr("mode", "DCR")
    if (mode.decode() if isinstance(mode, bytes) else mode) == "CRD":
        return torch.nn.functional.pixel_shuffle(x, k)
    y = x.reshape(b, k, k, c // (k * k), h, w).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(b, c // (k * k), h * k, w * k)


@op("SpaceToDepth")
def _space_to_depth(s, ins):
    x = ins[0]
    b, c, h, w = x.shape
    k = int(s.attr("blocksize"))
    y = x.reshape(b, c, h // k, k, w // k, k).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(b, c * k * k, h // k, w // k)


@op("Shape")
def _shape(s, ins):
    shape = list(ins[0].shape)
    rank = len(shape)
    start, end = s.attr("start", 0), s.attr("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return torch.tensor(shape[start:end], dtype=torch.int64, device=s.twin.device)


@op("Size")
def _size(s, ins):
    return torch.tensor(ins[0].numel(), dtype=torch.int64, device=s.twin.device)


@op("Gather")
def _gather(s, ins):
    x, idx = ins
    axis = s.attr("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


@op("GatherElements")
def _gather_elements(s, ins):
    x, idx = ins
    axis = s.attr("axis", 0) % x.dim()
    idx = idx.long()
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


@op("ConstantOfShape")
def _constant_of_shape(s, ins):
    value = s.attr("value", None)
    if value is None:
        arr = np.zeros(1, dtype=np.float32)
    else:
        arr = np.asarray(value.values if isinstance(value, gs.Constant) else value)
    fill = to_torch(arr.reshape(-1)[:1], s.twin.device, s.twin.float_dtype)
    return fill.reshape(()).expand(ints(ins[0])).clone()


@op("Constant")
def _constant(s, ins):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in s.attrs:
            v = s.attrs[key]
            arr = np.asarray(v.values if isinstance(v, gs.Constant) else v)
            if key.startswith("value_float"):
                arr = arr.astype(np.float32)
            elif key.startswith("value_int"):
                arr = arr.astype(np.int64)
            return to_torch(arr, s.twin.device, s.twin.float_dtype)
    s.fail("this Constant attribute")


@op("Expand")
def _expand(s, ins):
    x = ins[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(ints(ins[1])))
    return x.expand(shape)


@op("Tile")
def _tile(s, ins):
    return ins[0].repeat(ints(ins[1]))


@op("Range")
def _range(s, ins):
    start, limit, delta = (v.reshape(()).item() for v in ins)
    return torch.arange(start, limit, delta, dtype=ins[0].dtype, device=ins[0].device)


@op("CumSum")
def _cumsum(s, ins):
    x = ins[0]
    axis = int(ins[1].reshape(-1)[0]) % x.dim()
    if s.attr("reverse", 0):
        x = torch.flip(x, [axis])
    y = torch.cumsum(x, dim=axis)
    if s.attr("exclusive", 0):
        y = y - x
    return torch.flip(y, [axis]) if s.attr("reverse", 0) else y


@op("Trilu")
def _trilu(s, ins):
    """The upper (default) or lower triangle from diagonal k (a causal mask's `triu(1)`)."""
    k = int(opt(ins, 1).reshape(-1)[0]) if opt(ins, 1) is not None else 0
    return torch.triu(ins[0], k) if s.attr("upper", 1) else torch.tril(ins[0], k)


@op("NonZero")
def _nonzero(s, ins):
    return torch.nonzero(ins[0]).transpose(0, 1)
