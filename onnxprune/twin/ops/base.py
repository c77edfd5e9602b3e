"""Helpers shared by the twin's ops: operands given as attributes or inputs, and convolution padding."""
from __future__ import annotations

import numpy as np
import onnx
import torch

from ..step import Step

ONNX_TO_TORCH = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def to_torch(value, device, float_dtype: torch.dtype | None) -> torch.Tensor:
    """A constant as a torch tensor on `device` (unsigned wide ints as int64; floats in `float_dtype`)."""
    arr = np.asarray(value)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    t = torch.from_numpy(np.array(arr, order="C", copy=True))
    if float_dtype is not None and t.is_floating_point():
        t = t.to(float_dtype)
    return t.to(device)


def ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def opt(ins, i):
    return ins[i] if i < len(ins) else None


def input_or_attr(s: Step, ins, index: int, name: str):
    if name in s.attrs:
        return list(s.attrs[name])
    return ints(opt(ins, index))


def spatial_pads(s: Step, in_sizes, kernel, strides, dilations) -> tuple[list[int], list[int]]:
    nd = len(kernel)
    auto = s.attr("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, k, st, d in zip(in_sizes, kernel, strides, dilations):
            out = -(-n // st)
            total = max(0, (out - 1) * st + (k - 1) * d + 1 - n)
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin, end
    if auto == "VALID":
        return [0] * nd, [0] * nd
    pads = list(s.attr("pads", [0] * (2 * nd)))
    return pads[:nd], pads[nd:]


def torch_pad(begin, end) -> list[int]:
    """F.pad's order (last dim first) for pads on the trailing len(begin) dims."""
    out = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out
