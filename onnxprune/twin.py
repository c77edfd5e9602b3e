"""A torch twin of the normalised ONNX graph: the same computation, differentiable, with gates.

`Twin(analysis)` is a `torch.nn.Module` that interprets `analysis.graph` (the normalised model the
analyzer and the rewriter work on) node by node with torch ops. Constants become buffers on the
chosen device (floating ones in the chosen dtype). Every consumer slice the rewriter scales (edits
of kind 'consumer' and 'grouped_consumer') is multiplied in the forward pass by the *gate* of its
channel class:

    twin(inputs)                      == the original model
    twin(inputs, gates=keep * gamma)  == the masked reference, Rewriter(a, keep, gamma, masked=True)

where `keep, gamma = selection.class_arrays(analysis)`. `gates` may require grad: the gradient of
any function of the outputs with respect to every channel's gate comes out of one backward pass
(the Taylor scores of global imitation).

Re-fitted consumer weights (`Selection.replace`, `replace=` here) are used as given, with only the
removed channels' slices zeroed by `keep` (γ is already folded into them), exactly as the masked
reference does; they are not gated.

The interpreter covers the ops the analyzer has handlers for, plus the integer shape arithmetic
exporters emit around them (Shape, Gather, Concat, ConstantOfShape, Range, Equal, Where...). An op it
does not know raises NotImplementedError when the twin is built, naming the op and the node.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
import torch.nn.functional as F

from .analysis import Analysis

_CONSUMER_KINDS = ("consumer", "grouped_consumer")

_ONNX_TO_TORCH = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def _to_torch(value, device, float_dtype: torch.dtype | None) -> torch.Tensor:
    arr = np.asarray(value)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        arr = arr.astype(np.int64)
    t = torch.from_numpy(np.array(arr, order="C", copy=True))
    if float_dtype is not None and t.is_floating_point():
        t = t.to(float_dtype)
    return t.to(device)


# ---------------------------------------------------------------------------------------- steps
class _Step:
    """One node as the interpreter runs it."""

    def __init__(self, index: int, node: gs.Node, fn: Callable, opset: int, twin: "Twin"):
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


_OPS: dict[str, Callable] = {}


def _op(*names: str):
    def register(fn):
        for n in names:
            _OPS[n] = fn
        return fn
    return register


def supported_ops() -> list[str]:
    return sorted(_OPS)


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _opt(ins, i):
    return ins[i] if i < len(ins) else None


def _input_or_attr(s: _Step, ins, index: int, name: str):
    if name in s.attrs:
        return list(s.attrs[name])
    return _ints(_opt(ins, index))


# ---------------------------------------------------------------------------------- elementwise
def _unary(fn):
    return lambda s, ins: fn(s, ins[0])


_UNARY_FNS = {
    "Relu": lambda s, x: torch.relu(x),
    "LeakyRelu": lambda s, x: F.leaky_relu(x, s.attr("alpha", 0.01)),
    "Sigmoid": lambda s, x: torch.sigmoid(x),
    "HardSigmoid": lambda s, x: torch.clamp(s.attr("alpha", 0.2) * x + s.attr("beta", 0.5), 0, 1),
    "HardSwish": lambda s, x: x * torch.clamp(x / 6 + 0.5, 0, 1),
    "Tanh": lambda s, x: torch.tanh(x),
    "Elu": lambda s, x: F.elu(x, s.attr("alpha", 1.0)),
    "Selu": lambda s, x: s.attr("gamma", 1.05070102214813232421875) * torch.where(
        x > 0, x, s.attr("alpha", 1.67326319217681884765625) * (torch.exp(x) - 1)),
    "Celu": lambda s, x: F.celu(x, s.attr("alpha", 1.0)),
    "Softplus": lambda s, x: F.softplus(x),
    "Softsign": lambda s, x: F.softsign(x),
    "Gelu": lambda s, x: F.gelu(x, approximate=s.attr("approximate", "none")),
    "Erf": lambda s, x: torch.erf(x),
    "Exp": lambda s, x: torch.exp(x),
    "Log": lambda s, x: torch.log(x),
    "Sqrt": lambda s, x: torch.sqrt(x),
    "Neg": lambda s, x: -x,
    "Abs": lambda s, x: torch.abs(x),
    "Identity": lambda s, x: x,
    "Floor": lambda s, x: torch.floor(x),
    "Ceil": lambda s, x: torch.ceil(x),
    "Round": lambda s, x: torch.round(x),
    "Reciprocal": lambda s, x: torch.reciprocal(x),
    "Mish": lambda s, x: x * torch.tanh(F.softplus(x)),
    "Sin": lambda s, x: torch.sin(x),
    "Cos": lambda s, x: torch.cos(x),
    "Tan": lambda s, x: torch.tan(x),
    "Sign": lambda s, x: torch.sign(x),
    "ThresholdedRelu": lambda s, x: torch.where(x > s.attr("alpha", 1.0), x, torch.zeros_like(x)),
    "IsNaN": lambda s, x: torch.isnan(x),
    "Not": lambda s, x: torch.logical_not(x),
}
for _name, _fn in _UNARY_FNS.items():
    _OPS[_name] = _unary(_fn)


@_op("IsInf")
def _isinf(s, ins):
    x = ins[0]
    pos, neg = s.attr("detect_positive", 1), s.attr("detect_negative", 1)
    return (torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))


@_op("Cast")
def _cast(s, ins):
    to = _ONNX_TO_TORCH.get(int(s.attr("to")))
    if to is None:
        s.fail(f"cast to ONNX type {s.attr('to')}")
    return ins[0].to(s.float_dtype(to))


@_op("CastLike")
def _cast_like(s, ins):
    return ins[0].to(ins[1].dtype)


@_op("Dropout")
def _dropout(s, ins):
    x = ins[0]
    return [x, torch.ones_like(x, dtype=torch.bool)][:max(1, s.n_out)]


@_op("Clip")
def _clip(s, ins):
    x = ins[0]
    if s.opset < 11:
        lo, hi = s.attr("min", None), s.attr("max", None)
    else:
        lo, hi = _opt(ins, 1), _opt(ins, 2)
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype, device=x.device))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype, device=x.device))
    return x


def _div(a, b):
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX Runtime: C++ integer division


_BINARY = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div,
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    _OPS[_name] = (lambda f: lambda s, ins: f(ins[0], ins[1]))(_fn)


@_op("Pow")
def _pow(s, ins):
    return torch.pow(ins[0], ins[1]).to(ins[0].dtype)


@_op("Mod")
def _mod(s, ins):
    return torch.fmod(ins[0], ins[1]) if s.attr("fmod", 0) else torch.remainder(ins[0], ins[1])


@_op("PRelu")
def _prelu(s, ins):
    x, slope = ins
    return torch.where(x < 0, x * slope, x)


@_op("Max", "Min", "Sum", "Mean")
def _variadic(s, ins):
    xs = [x for x in ins if x is not None]
    out = xs[0]
    f = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[s.op]
    for x in xs[1:]:
        out = f(out, x)
    return out / len(xs) if s.op == "Mean" else out


@_op("Where")
def _where(s, ins):
    return torch.where(ins[0], ins[1], ins[2])


# ------------------------------------------------------------------------------ normalisations
@_op("BatchNormalization")
def _batchnorm(s, ins):
    x, scale, bias, mean, var = ins[:5]
    if s.attr("training_mode", 0):
        s.fail("training_mode=1")
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var + s.attr("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


@_op("InstanceNormalization")
def _instancenorm(s, ins):
    x, scale, bias = ins
    axes = list(range(2, x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + s.attr("epsilon", 1e-5)) * scale.reshape(shape) + bias.reshape(shape)


@_op("LayerNormalization")
def _layernorm(s, ins):
    x, scale, bias = ins[0], ins[1], _opt(ins, 2)
    axis = s.attr("axis", -1) % x.dim()
    axes = list(range(axis, x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    inv = torch.rsqrt(var + s.attr("epsilon", 1e-5))
    y = (x - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return [y, mean, inv][:max(1, s.n_out)]


# ---------------------------------------------------------------------------- conv and linear
def _spatial_pads(s: _Step, in_sizes, kernel, strides, dilations) -> tuple[list[int], list[int]]:
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


def _torch_pad(begin, end) -> list[int]:
    """F.pad's order (last dim first) for pads on the trailing len(begin) dims."""
    out = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [int(b), int(e)]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@_op("Conv")
def _conv(s, ins):
    x, w, b = ins[0], ins[1], _opt(ins, 2)
    nd = w.dim() - 2
    if nd not in _CONV:
        s.fail(f"{nd}-D convolution")
    kernel = list(w.shape[2:])
    strides = list(s.attr("strides", [1] * nd))
    dil = list(s.attr("dilations", [1] * nd))
    begin, end = _spatial_pads(s, x.shape[2:], kernel, strides, dil)
    if begin == end:
        padding = begin
    else:
        x, padding = F.pad(x, _torch_pad(begin, end)), [0] * nd
    return _CONV[nd](x, w, b, strides, padding, dil, int(s.attr("group", 1)))


@_op("ConvTranspose")
def _conv_transpose(s, ins):
    x, w, b = ins[0], ins[1], _opt(ins, 2)
    nd = w.dim() - 2
    if nd not in _CONV_T:
        s.fail(f"{nd}-D transposed convolution")
    kernel = list(w.shape[2:])
    strides = list(s.attr("strides", [1] * nd))
    dil = list(s.attr("dilations", [1] * nd))
    outpad = list(s.attr("output_padding", [0] * nd))
    group = int(s.attr("group", 1))
    auto = s.attr("auto_pad", "NOTSET")
    in_sizes = list(x.shape[2:])
    full = [st * (n - 1) + op + (k - 1) * d + 1 for n, st, op, k, d in zip(in_sizes, strides, outpad, kernel, dil)]
    if "output_shape" in s.attrs or auto in ("SAME_UPPER", "SAME_LOWER"):
        target = list(s.attr("output_shape"))[-nd:] if "output_shape" in s.attrs else \
            [n * st for n, st in zip(in_sizes, strides)]
        begin, end = [], []
        for f_, t in zip(full, target):
            total = f_ - t
            if total < 0:
                s.fail("output_shape larger than the full output")
            if auto == "SAME_UPPER":
                begin.append(total // 2), end.append(total - total // 2)
            else:
                begin.append(total - total // 2), end.append(total // 2)
    elif auto == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:
        pads = list(s.attr("pads", [0] * (2 * nd)))
        begin, end = pads[:nd], pads[nd:]
    # torch's output_padding must be < stride or dilation: apply it by cropping instead
    y = _CONV_T[nd](x, w, b, strides, 0, 0, group, dil)
    for i in range(nd):
        size = y.shape[2 + i]
        want = full[i] - begin[i] - end[i]
        stop = begin[i] + want
        if stop > size:  # output_padding beyond the last input: zero rows + bias
            extra = torch.zeros_like(y.narrow(2 + i, 0, 1)).expand(
                *[stop - size if j == 2 + i else d for j, d in enumerate(y.shape)])
            if b is not None:
                extra = extra + b.reshape([1, -1] + [1] * nd)
            y = torch.cat([y, extra], dim=2 + i)
        y = y.narrow(2 + i, begin[i], want)
    return y


@_op("Gemm")
def _gemm(s, ins):
    a, b, c = ins[0], ins[1], _opt(ins, 2)
    if s.attr("transA", 0):
        a = a.transpose(0, 1)
    if s.attr("transB", 0):
        b = b.transpose(0, 1)
    y = torch.matmul(a, b)
    alpha, beta = s.attr("alpha", 1.0), s.attr("beta", 1.0)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


@_op("MatMul")
def _matmul(s, ins):
    return torch.matmul(ins[0], ins[1])


# ------------------------------------------------------------------------------------- pooling
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(s, x, kernel, strides, dil):
    """Explicit begin pads, end pads extended to cover every output window, and output sizes."""
    begin, end = _spatial_pads(s, x.shape[2:], kernel, strides, dil)
    ceil = bool(s.attr("ceil_mode", 0))
    outs, ends = [], []
    for n, k, st, d, b, e in zip(x.shape[2:], kernel, strides, dil, begin, end):
        eff = (k - 1) * d + 1
        num = n + b + e - eff
        o = (-(-num // st) if ceil else num // st) + 1
        if ceil and (o - 1) * st >= n + b:  # the last window would start in the end padding
            o -= 1
        outs.append(o)
        ends.append(max(e, (o - 1) * st + eff - n - b))
    return begin, end, ends, outs


def _crop(y, outs):
    for i, o in enumerate(outs):
        y = y.narrow(2 + i, 0, o)
    return y


@_op("MaxPool", "AveragePool", "LpPool")
def _pool(s, ins):
    x = ins[0]
    kernel = list(s.attr("kernel_shape"))
    nd = len(kernel)
    if nd not in _MAXPOOL:
        s.fail(f"{nd}-D pooling")
    if s.op == "MaxPool" and s.wants(1):
        s.fail("the Indices output")
    strides = list(s.attr("strides", [1] * nd))
    dil = list(s.attr("dilations", [1] * nd))
    begin, end, ends, outs = _pool_geometry(s, x, kernel, strides, dil)
    if s.op == "MaxPool":
        low = torch.finfo(x.dtype).min if x.is_floating_point() else torch.iinfo(x.dtype).min
        xp = F.pad(x, _torch_pad(begin, ends), value=float("-inf") if x.is_floating_point() else low)
        return _crop(_MAXPOOL[nd](xp, kernel, strides, 0, dil), outs)
    if any(d != 1 for d in dil):
        s.fail("dilated average pooling")
    if s.op == "LpPool":
        p = s.attr("p", 2)
        xp = F.pad(torch.abs(x) ** p, _torch_pad(begin, ends))
        total = _crop(_AVGPOOL[nd](xp, kernel, strides, 0), outs) * math.prod(kernel)
        return total ** (1.0 / p)
    xp = F.pad(x, _torch_pad(begin, ends))
    # divisor: the window's elements inside the input (plus the explicit pads with count_include_pad)
    incl = bool(s.attr("count_include_pad", 0))
    region = [n + (b + e if incl else 0) for n, b, e in zip(x.shape[2:], begin, end)]
    lead = [0 if incl else b for b in begin]  # zeros before the counted region
    trail = [b + n + e - r - l for b, n, e, r, l in zip(begin, x.shape[2:], ends, region, lead)]
    mask = F.pad(torch.ones([1, 1] + region, dtype=x.dtype, device=x.device), _torch_pad(lead, trail))
    num = _crop(_AVGPOOL[nd](xp, kernel, strides, 0), outs)
    den = _crop(_AVGPOOL[nd](mask, kernel, strides, 0), outs)
    return num / den


@_op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(s, ins):
    x = ins[0]
    axes = list(range(2, x.dim()))
    if s.op == "GlobalAveragePool":
        return x.mean(dim=axes, keepdim=True)
    if s.op == "GlobalMaxPool":
        return torch.amax(x, dim=axes, keepdim=True)
    p = s.attr("p", 2)
    return (torch.abs(x) ** p).sum(dim=axes, keepdim=True) ** (1.0 / p)


_REDUCE = {
    "ReduceMean": lambda x, a, k: x.mean(dim=a, keepdim=k),
    "ReduceSum": lambda x, a, k: x.sum(dim=a, keepdim=k),
    "ReduceMax": lambda x, a, k: torch.amax(x, dim=a, keepdim=k),
    "ReduceMin": lambda x, a, k: torch.amin(x, dim=a, keepdim=k),
    "ReduceL1": lambda x, a, k: torch.abs(x).sum(dim=a, keepdim=k),
    "ReduceL2": lambda x, a, k: torch.sqrt((x * x).sum(dim=a, keepdim=k)),
    "ReduceSumSquare": lambda x, a, k: (x * x).sum(dim=a, keepdim=k),
    "ReduceLogSum": lambda x, a, k: torch.log(x.sum(dim=a, keepdim=k)),
    "ReduceLogSumExp": lambda x, a, k: torch.logsumexp(x, dim=a, keepdim=k),
}


def _reduce_prod(x, axes, keep):
    for a in sorted(axes, reverse=True):
        x = torch.prod(x, dim=a, keepdim=keep)
    return x


@_op(*_REDUCE, "ReduceProd")
def _reduce(s, ins):
    x = ins[0]
    axes = _input_or_attr(s, ins, 1, "axes")
    if not axes:
        if s.attr("noop_with_empty_axes", 0):
            return x
        axes = list(range(x.dim()))
    axes = sorted({int(a) % x.dim() for a in axes}) if x.dim() else []
    keep = bool(s.attr("keepdims", 1))
    if not axes:
        return x
    if s.op == "ReduceProd":
        return _reduce_prod(x, axes, keep)
    return _REDUCE[s.op](x, axes, keep)


@_op("ArgMax", "ArgMin")
def _arg(s, ins):
    x = ins[0]
    axis, keep = s.attr("axis", 0) % x.dim(), bool(s.attr("keepdims", 1))
    f = torch.argmax if s.op == "ArgMax" else torch.argmin
    if s.attr("select_last_index", 0):
        flipped = f(torch.flip(x, [axis]), dim=axis, keepdim=keep)
        return x.shape[axis] - 1 - flipped
    return f(x, dim=axis, keepdim=keep)


@_op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(s, ins):
    x = ins[0]
    if s.opset < 13:
        axis = s.attr("axis", 1) % x.dim()
        flat = x.reshape(int(math.prod(x.shape[:axis])), -1)
        return _softmax_last(s.op, flat).reshape(x.shape)
    axis = s.attr("axis", -1) % x.dim()
    return _softmax_last(s.op, x.movedim(axis, -1)).movedim(-1, axis)


def _softmax_last(op, x):
    if op == "Softmax":
        return torch.softmax(x, dim=-1)
    if op == "LogSoftmax":
        return torch.log_softmax(x, dim=-1)
    return F.one_hot(torch.argmax(x, dim=-1), x.shape[-1]).to(x.dtype)


# ------------------------------------------------------------------------------ Pad and Resize
def _index_pad(x, axis, b, e, mode):
    n = x.shape[axis]
    idx = torch.arange(-b, n + e, device=x.device)
    if mode == "edge":
        idx = idx.clamp(0, n - 1)
    elif mode == "wrap":
        idx = idx % n
    else:  # reflect
        if n == 1:
            idx = torch.zeros_like(idx)
        else:
            period = 2 * (n - 1)
            idx = idx % period
            idx = torch.where(idx >= n, period - idx, idx)
    return x.index_select(axis, idx)


@_op("Pad")
def _pad(s, ins):
    x = ins[0]
    mode = s.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if s.opset < 11:
        pads, value = list(s.attr("pads")), s.attr("value", 0.0)
    else:
        pads = _ints(ins[1])
        value = _opt(ins, 2)
        value = 0 if value is None else value.reshape(-1)[0].item()
    axes = _ints(_opt(ins, 3)) if s.opset >= 18 else None
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[i + n]
    if mode == "constant":
        first = next((a for a in range(rank) if begin[a] or end[a]), rank)
        if first == rank:
            return x
        return F.pad(x, _torch_pad(begin[first:], end[first:]), value=value)
    if mode not in ("reflect", "edge", "wrap"):
        s.fail(f"mode '{mode}'")
    for a in range(rank):
        if begin[a] < 0 or end[a] < 0:
            x = x.narrow(a, max(0, -begin[a]), x.shape[a] - max(0, -begin[a]) - max(0, -end[a]))
        if begin[a] > 0 or end[a] > 0:
            x = _index_pad(x, a, max(0, begin[a]), max(0, end[a]), mode)
    return x


def _source_coords(s, out_len, in_len, scale):
    """Where each output position samples the input, per coordinate_transformation_mode."""
    ctm = s.attr("coordinate_transformation_mode", "half_pixel")
    if isinstance(ctm, bytes):
        ctm = ctm.decode()
    if s.op == "Upsample" or (s.op == "Resize" and s.opset < 11):
        ctm = "asymmetric"
    x = torch.arange(out_len, dtype=torch.float64)
    if ctm == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if ctm == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(x)
    if ctm == "asymmetric":
        return x / scale
    if ctm == "half_pixel_symmetric":
        adjustment = out_len / (in_len * scale)
        offset = in_len / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    s.fail(f"coordinate_transformation_mode '{ctm}'")


def _nearest_index(s, c, in_len, scale):
    nm = s.attr("nearest_mode", "round_prefer_floor")
    if isinstance(nm, bytes):
        nm = nm.decode()
    if s.op == "Upsample" or (s.op == "Resize" and s.opset < 11):
        nm = "ceil" if scale < 1 else "floor"  # ONNX Runtime's rule before nearest_mode existed
    if nm == "round_prefer_floor":
        i = torch.ceil(c - 0.5)
    elif nm == "round_prefer_ceil":
        i = torch.floor(c + 0.5)
    elif nm == "floor":
        i = torch.floor(c)
    elif nm == "ceil":
        i = torch.ceil(c)
    else:
        s.fail(f"nearest_mode '{nm}'")
    return i.clamp(0, in_len - 1).long()


def _cubic_weights(t, a):
    t = t.unsqueeze(-1)
    d = torch.cat([t + 1, t, 1 - t, 2 - t], dim=-1)  # distances to the 4 taps
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d <= 1, near, far)


def _resize_axis(s, x, axis, out_len, scale, mode):
    in_len = x.shape[axis]
    if out_len == in_len and scale == 1.0:
        return x
    c = _source_coords(s, out_len, in_len, scale)
    dev = x.device
    if mode == "nearest":
        return x.index_select(axis, _nearest_index(s, c, in_len, scale).to(dev))
    shape = [1] * x.dim()
    shape[axis] = out_len
    if mode == "linear":
        c = c.clamp(0, in_len - 1)
        lo = torch.floor(c).long()
        hi = (lo + 1).clamp(max=in_len - 1)
        w = (c - lo).to(x.dtype).to(dev).reshape(shape)
        return x.index_select(axis, lo.to(dev)) * (1 - w) + x.index_select(axis, hi.to(dev)) * w
    if mode == "cubic":
        a = s.attr("cubic_coeff_a", -0.75)
        base = torch.floor(c).long()
        taps = base.unsqueeze(-1) + torch.arange(-1, 3)
        wts = _cubic_weights(c - base, a)
        if s.attr("exclude_outside", 0):
            wts = torch.where((taps >= 0) & (taps < in_len), wts, torch.zeros_like(wts))
            wts = wts / wts.sum(-1, keepdim=True)
        taps = taps.clamp(0, in_len - 1)
        out = 0
        for k in range(4):
            out = out + x.index_select(axis, taps[:, k].to(dev)) * wts[:, k].to(x.dtype).to(dev).reshape(shape)
        return out
    s.fail(f"mode '{mode}'")


@_op("Resize", "Upsample")
def _resize(s, ins):
    x = ins[0]
    mode = s.attr("mode", "nearest")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode in ("bilinear", "trilinear"):
        mode = "linear"
    if s.attr("antialias", 0):
        s.fail("antialias")
    if s.attr("keep_aspect_ratio_policy", "stretch") not in ("stretch", b"stretch"):
        s.fail("keep_aspect_ratio_policy")
    rank = x.dim()
    axes = [a % rank for a in s.attr("axes", range(rank))]
    if s.op == "Upsample":
        scales = list(s.attr("scales")) if "scales" in s.attrs else ins[1].reshape(-1).tolist()
        sizes = None
    elif s.opset < 11:
        scales, sizes = ins[1].reshape(-1).tolist(), None
    else:
        sc, sz = _opt(ins, 2), _opt(ins, 3)
        scales = sc.reshape(-1).tolist() if sc is not None and sc.numel() else None
        sizes = _ints(sz) if sz is not None and sz.numel() else None
        if s.attr("coordinate_transformation_mode", "half_pixel") in ("tf_crop_and_resize", b"tf_crop_and_resize"):
            s.fail("coordinate_transformation_mode 'tf_crop_and_resize'")
    for i, a in enumerate(axes):
        n = x.shape[a]
        if sizes is not None:
            out_len, scale = sizes[i], sizes[i] / n
        else:
            scale = float(scales[i])
            out_len = int(math.floor(n * scale))
        x = _resize_axis(s, x, a, out_len, scale, mode)
    return x


# ------------------------------------------------------------------------------- shape and data
@_op("Flatten")
def _flatten(s, ins):
    x = ins[0]
    axis = s.attr("axis", 1)
    axis = axis % x.dim() if axis < 0 else axis
    return x.reshape(int(math.prod(x.shape[:axis])), int(math.prod(x.shape[axis:])))


@_op("Reshape")
def _reshape(s, ins):
    x = ins[0]
    shape = list(s.attr("shape")) if s.opset < 5 else _ints(ins[1])
    if not s.attr("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@_op("Transpose")
def _transpose(s, ins):
    x = ins[0]
    perm = s.attr("perm", None)
    perm = list(reversed(range(x.dim()))) if perm is None else list(perm)
    return x.permute(perm)


@_op("Squeeze")
def _squeeze(s, ins):
    x = ins[0]
    axes = _input_or_attr(s, ins, 1, "axes")
    if not axes:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted({a % x.dim() for a in axes}, reverse=True)
    for a in axes:
        x = x.squeeze(a)
    return x


@_op("Unsqueeze")
def _unsqueeze(s, ins):
    x = ins[0]
    axes = _input_or_attr(s, ins, 1, "axes")
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@_op("Concat")
def _concat(s, ins):
    xs = [x for x in ins if x is not None]
    return torch.cat(xs, dim=s.attr("axis") % xs[0].dim())


@_op("Split")
def _split(s, ins):
    x = ins[0]
    axis = s.attr("axis", 0) % x.dim()
    sizes = _input_or_attr(s, ins, 1, "split")
    if not sizes:
        n = s.attr("num_outputs", s.n_out)
        chunk = -(-x.shape[axis] // n)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


@_op("Slice")
def _slice(s, ins):
    x = ins[0]
    if s.opset < 10:
        starts, ends = list(s.attr("starts")), list(s.attr("ends"))
        axes, steps = s.attr("axes", None), None
        axes = None if axes is None else list(axes)
    else:
        starts, ends, axes, steps = _ints(ins[1]), _ints(ins[2]), _ints(_opt(ins, 3)), _ints(_opt(ins, 4))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index: list = [slice(None)] * x.dim()
    flips = []
    for st, en, a, step in zip(starts, ends, axes, steps):
        a %= x.dim()
        n = x.shape[a]
        st = st + n if st < 0 else st
        en = en + n if en < 0 else en
        if step > 0:
            st, en = min(max(st, 0), n), min(max(en, 0), n)
            index[a] = slice(st, max(st, en), step)
        else:
            st, en = min(max(st, 0), n - 1), min(max(en, -1), n - 1)
            flips.append((a, torch.arange(st, en, step, device=x.device)))
    x = x[tuple(index)]
    for a, idx in flips:
        x = x.index_select(a, idx)
    return x


@_op("Shape")
def _shape(s, ins):
    shape = list(ins[0].shape)
    rank = len(shape)
    start, end = s.attr("start", 0), s.attr("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return torch.tensor(shape[start:end], dtype=torch.int64, device=s.twin.device)


@_op("Size")
def _size(s, ins):
    return torch.tensor(ins[0].numel(), dtype=torch.int64, device=s.twin.device)


@_op("Gather")
def _gather(s, ins):
    x, idx = ins
    axis = s.attr("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


@_op("GatherElements")
def _gather_elements(s, ins):
    x, idx = ins
    axis = s.attr("axis", 0) % x.dim()
    idx = idx.long()
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


@_op("ConstantOfShape")
def _constant_of_shape(s, ins):
    value = s.attr("value", None)
    if value is None:
        arr = np.zeros(1, dtype=np.float32)
    else:
        arr = np.asarray(value.values if isinstance(value, gs.Constant) else value)
    fill = _to_torch(arr.reshape(-1)[:1], s.twin.device, s.twin.float_dtype)
    return fill.reshape(()).expand(_ints(ins[0])).clone()


@_op("Constant")
def _constant(s, ins):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in s.attrs:
            v = s.attrs[key]
            arr = np.asarray(v.values if isinstance(v, gs.Constant) else v)
            if key.startswith("value_float"):
                arr = arr.astype(np.float32)
            elif key.startswith("value_int"):
                arr = arr.astype(np.int64)
            return _to_torch(arr, s.twin.device, s.twin.float_dtype)
    s.fail("this Constant attribute")


@_op("Expand")
def _expand(s, ins):
    x = ins[0]
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(ins[1])))
    return x.expand(shape)


@_op("Tile")
def _tile(s, ins):
    return ins[0].repeat(_ints(ins[1]))


@_op("Range")
def _range(s, ins):
    start, limit, delta = (v.reshape(()).item() for v in ins)
    return torch.arange(start, limit, delta, dtype=ins[0].dtype, device=ins[0].device)


@_op("CumSum")
def _cumsum(s, ins):
    x = ins[0]
    axis = int(ins[1].reshape(-1)[0]) % x.dim()
    if s.attr("reverse", 0):
        x = torch.flip(x, [axis])
    y = torch.cumsum(x, dim=axis)
    if s.attr("exclusive", 0):
        y = y - x
    return torch.flip(y, [axis]) if s.attr("reverse", 0) else y


@_op("NonZero")
def _nonzero(s, ins):
    return torch.nonzero(ins[0]).transpose(0, 1)


# ------------------------------------------------------------------------------------- the twin
class Twin(torch.nn.Module):
    """The normalised graph of `analysis`, as torch ops (see the module docstring).

    device: where constants live and the graph runs. dtype: cast every floating constant, input
    and Cast-to-float to this dtype (e.g. torch.float64 for gradient checks); None keeps the
    model's. replace: re-fitted consumer inputs, node index -> {input index: array} (as
    `Selection.replace`); keep: the per-class keep mask (`class_arrays(...)[0]`) that zeroes the
    removed channels' slices of the replaced nodes' consumer weights, as the masked reference does.
    """

    def __init__(self, analysis: Analysis, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 replace: dict[int, dict[int, np.ndarray]] | None = None, keep: np.ndarray | None = None):
        super().__init__()
        self.analysis = analysis
        self.register_buffer("_anchor", torch.zeros(0, device=device), persistent=False)
        self.float_dtype = dtype
        self.n_classes = len(analysis.class_of)
        graph = analysis.graph
        opset = next((imp.version for imp in analysis.model.opset_import if imp.domain in ("", "ai.onnx")), 0)
        self.input_names = [t.name for t in graph.inputs]
        self._consts: dict[str, str] = {}  # tensor name -> buffer name
        self._n_buffers = 0
        self.steps: list[_Step] = []
        nodes = list(graph.nodes)
        for i, node in enumerate(nodes):
            domain = "" if node.domain in (None, "", "ai.onnx") else node.domain
            fn = _OPS.get(node.op) if not domain else None
            if fn is None:
                raise NotImplementedError(
                    f"Twin: op '{domain + '::' if domain else ''}{node.op}' of node '{node.name}' is not supported")
            if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
                raise NotImplementedError(f"Twin: {node.op} node '{node.name}' has a subgraph (not supported)")
            step = _Step(i, node, fn, opset, self)
            for t in node.inputs:
                step.inputs.append(None if t.is_empty() else self._ref(t))
            self.steps.append(step)
        self.output_refs = [self._ref(t) for t in graph.outputs]

        # gates: class index per weight element, broadcast against the weight
        self._gated: dict[tuple[int, int], list[str]] = {}
        replaced = set(replace or {})
        for node_id, values in (replace or {}).items():
            step = self.steps[node_id]
            for index, value in values.items():
                while len(step.inputs) <= index:
                    step.inputs.append(None)
                step.inputs[index] = ("const", self._buffer(f"refit_{node_id}_{index}", value))
        for e in analysis.edits:
            if e.kind not in _CONSUMER_KINDS:
                continue
            step = self.steps[e.node]
            ref = step.inputs[e.input] if e.input < len(step.inputs) else None
            if ref is None:
                continue  # an absent optional input
            w = getattr(self, ref[1]) if ref[0] == "const" else None
            if w is None:
                raise ValueError(f"Twin: consumer weight {e.input} of node '{step.name}' is not a constant")
            cls = self._class_index(e, tuple(w.shape))
            if e.node in replaced:
                if keep is not None:  # keep only, γ is folded into the re-fitted values
                    scale = torch.as_tensor(np.asarray(keep, dtype=bool)[cls], device=self.device).to(w.dtype)
                    step.inputs[e.input] = ("const", self._buffer(f"masked_{e.node}_{e.input}", w * scale))
                continue
            name = f"gate_index_{sum(map(len, self._gated.values()))}"
            self.register_buffer(name, torch.as_tensor(cls, dtype=torch.long, device=self.device), persistent=False)
            self._gated.setdefault((e.node, e.input), []).append(name)
        self._last_use = self._plan()

    @property
    def device(self) -> torch.device:
        """Where the twin runs (follows `.to(device)`)."""
        return self._anchor.device

    def gates_for(self, selection) -> torch.Tensor:
        """keep·γ per class for a `Selection`: the gates that make the twin the masked reference."""
        keep, gamma = selection.class_arrays(self.analysis)
        dtype = self.float_dtype or torch.float32
        return torch.as_tensor(keep * gamma, dtype=dtype, device=self.device)

    # ----- construction helpers ------------------------------------------------------------------
    def _buffer(self, key: str, value) -> str:
        self._n_buffers += 1
        name = f"c{self._n_buffers}_" + "".join(ch if ch.isalnum() else "_" for ch in key)[:40]
        t = value if isinstance(value, torch.Tensor) else _to_torch(value, self.device, self.float_dtype)
        self.register_buffer(name, t.to(self.device))
        return name

    def _ref(self, t) -> tuple[str, str]:
        if isinstance(t, gs.Constant):
            if t.name not in self._consts:
                self._consts[t.name] = self._buffer(t.name, np.asarray(t.values))
            return ("const", self._consts[t.name])
        return ("var", t.name)

    def _class_index(self, e, wshape: tuple) -> np.ndarray:
        """Class id per weight element (broadcastable to the weight) for a consumer edit."""
        classes = self.analysis.class_of[np.asarray(e.labels)]
        if e.kind == "grouped_consumer":
            cout, cin_g = wshape[0], wshape[1]
            out_per = cout // e.groups
            q = np.arange(cout) // out_per
            idx = classes[q[:, None] * cin_g + np.arange(cin_g)[None, :]]
            return idx.reshape((cout, cin_g) + (1,) * (len(wshape) - 2))
        shape = [1] * len(wshape)
        shape[e.axis] = -1
        return classes.reshape(shape)

    def _plan(self) -> dict[str, int]:
        """Last step reading each variable, so intermediate tensors are freed early."""
        last: dict[str, int] = {}
        for i, step in enumerate(self.steps):
            for ref in step.inputs:
                if ref is not None and ref[0] == "var":
                    last[ref[1]] = i
        return last

    # ----- running -------------------------------------------------------------------------------
    def forward(self, inputs: dict, gates: torch.Tensor | None = None,
                outputs: list[str] | None = None) -> list[torch.Tensor]:
        """Run the graph. `inputs`: graph input name -> tensor (or array). `gates`: [n_classes]
        floats, indexed by class id (class 0, the fixed channel, is never gated). `outputs`: tensor
        names to return instead of the graph outputs (any intermediate tensor)."""
        env: dict[str, torch.Tensor] = {}
        for name in self.input_names:
            if name not in inputs:
                raise KeyError(f"Twin: missing graph input '{name}'")
            x = inputs[name]
            x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
            if self.float_dtype is not None and x.is_floating_point():
                x = x.to(self.float_dtype)
            env[name] = x.to(self.device)
        g = None
        if gates is not None:
            g = torch.as_tensor(gates, device=self.device)
            if g.shape != (self.n_classes,):
                raise ValueError(f"Twin: gates must have shape [{self.n_classes}], got {list(g.shape)}")
            g = torch.cat([torch.ones(1, dtype=g.dtype, device=g.device), g[1:]])
        refs = self.output_refs if outputs is None else \
            [("const", self._consts[n]) if n in self._consts else ("var", n) for n in outputs]
        keep = {r[1] for r in refs if r[0] == "var"}
        for i, step in enumerate(self.steps):
            args = []
            for j, ref in enumerate(step.inputs):
                if ref is None:
                    args.append(None)
                elif ref[0] == "const":
                    w = getattr(self, ref[1])
                    if g is not None and (i, j) in self._gated:
                        for idx_name in self._gated[(i, j)]:
                            w = w * g[getattr(self, idx_name)].to(w.dtype)
                    args.append(w)
                else:
                    args.append(env[ref[1]])
            out = step.fn(step, args)
            if isinstance(out, torch.Tensor):
                out = [out]
            for name, t in zip(step.outputs, out):
                if name:
                    env[name] = t
            for ref in step.inputs:
                if ref is not None and ref[0] == "var" and self._last_use.get(ref[1]) == i and ref[1] not in keep:
                    env.pop(ref[1], None)
        result = []
        for ref in refs:
            if ref[0] == "const":
                result.append(getattr(self, ref[1]))
            elif ref[1] not in env:
                raise KeyError(f"Twin: tensor '{ref[1]}' is not computed by the graph")
            else:
                result.append(env[ref[1]])
        return result
