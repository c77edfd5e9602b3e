"""Gemm, MatMul and Einsum."""
from __future__ import annotations

import torch

from . import op
from .base import opt


@op("Gemm")
def _gemm(s, ins):
    a, b, c = ins[0], ins[1], opt(ins, 2)
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


@op("MatMul")
def _matmul(s, ins):
    return torch.matmul(ins[0], ins[1])


@op("Einsum")
def _einsum(s, ins):
    """ONNX's equation is numpy's (letters, `...`, an optional `->`), which torch reads as well."""
    return torch.einsum(s.attr("equation"), *ins)
