"""Elementwise ops, comparisons and logic, Where, and the normalisations (as `analysis/handlers/elementwise.py`)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import op, register_fn
from .base import ONNX_TO_TORCH, opt


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
    register_fn(_name, _unary(_fn))


@op("IsInf")
def _isinf(s, ins):
    x = ins[0]
    pos, neg = s.attr("detect_positive", 1), s.attr("detect_negative", 1)
    return (torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))


@op("Cast")
def _cast(s, ins):
    to = ONNX_TO_TORCH.get(int(s.attr("to")))
    if to is None:
        s.fail(f"cast to ONNX type {s.attr('to')}")
    return ins[0].to(s.float_dtype(to))


@op("CastLike")
def _cast_like(s, ins):
    return ins[0].to(ins[1].dtype)


@op("Dropout")
def _dropout(s, ins):
    x = ins[0]
    return [x, torch.ones_like(x, dtype=torch.bool)][:max(1, s.n_out)]


@op("Clip")
def _clip(s, ins):
    x = ins[0]
    if s.opset < 11:
        lo, hi = s.attr("min", None), s.attr("max", None)
    else:
        lo, hi = opt(ins, 1), opt(ins, 2)
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype, device=x.device))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype, device=x.device))
    return x


def _div(a, b):
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX Runtime: C++ integer division


_BINARY: dict[str, Callable] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div,
    "Equal": torch.eq, "Less": torch.lt, "LessOrEqual": torch.le, "Greater": torch.gt,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    register_fn(_name, (lambda f: lambda s, ins: f(ins[0], ins[1]))(_fn))


@op("Pow")
def _pow(s, ins):
    return torch.pow(ins[0], ins[1]).to(ins[0].dtype)


@op("Mod")
def _mod(s, ins):
    return torch.fmod(ins[0], ins[1]) if s.attr("fmod", 0) else torch.remainder(ins[0], ins[1])


@op("PRelu")
def _prelu(s, ins):
    x, slope = ins
    return torch.where(x < 0, x * slope, x)


@op("Max", "Min", "Sum", "Mean")
def _variadic(s, ins):
    xs = [x for x in ins if x is not None]
    out = xs[0]
    f = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add, "Mean": torch.add}[s.op]
    for x in xs[1:]:
        out = f(out, x)
    return out / len(xs) if s.op == "Mean" else out


@op("Where")
def _where(s, ins):
    return torch.where(ins[0], ins[1], ins[2])


# ------------------------------------------------------------------------------ normalisations
@op("BatchNormalization")
def _batchnorm(s, ins):
    x, scale, bias, mean, var = ins[:5]
    if s.attr("training_mode", 0):
        s.fail("training_mode=1")
    shape = [1, -1] + [1] * (x.dim() - 2)
    inv = scale / torch.sqrt(var + s.attr("epsilon", 1e-5))
    return (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)


@op("InstanceNormalization")
def _instancenorm(s, ins):
    x, scale, bias = ins
    axes = list(range(2, x.dim()))
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    shape = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean) / torch.sqrt(var + s.attr("epsilon", 1e-5)) * scale.reshape(shape) + bias.reshape(shape)


def layer_norm(x, scale, bias, axes: list[int], eps: float):
    """(y, mean, inverse standard deviation) of a LayerNormalization over `axes` (bias None: none)."""
    mean = x.mean(dim=axes, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axes, keepdim=True)
    inv = torch.rsqrt(var + eps)
    y = (x - mean) * inv * scale
    return (y if bias is None else y + bias), mean, inv


@op("LayerNormalization")
def _layernorm(s, ins):
    x = ins[0]
    axis = s.attr("axis", -1) % x.dim()
    y, mean, inv = layer_norm(x, ins[1], opt(ins, 2), list(range(axis, x.dim())), s.attr("epsilon", 1e-5))
    return [y, mean, inv][:max(1, s.n_out)]
