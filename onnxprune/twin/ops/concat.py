"""Concat, Split and Slice (as `analysis/handlers/concat.py`)."""
from __future__ import annotations

import torch

from . import op
from .base import input_or_attr, ints, opt


@op("Concat")
def _concat(s, ins):
    xs = [x for x in ins if x is not None]
    return torch.cat(xs, dim=s.attr("axis") % xs[0].dim())


@op("Split")
def _split(s, ins):
    x = ins[0]
    axis = s.attr("axis", 0) % x.dim()
    sizes = input_or_attr(s, ins, 1, "split")
    if not sizes:
        n = s.attr("num_outputs", s.n_out)
        chunk = -(-x.shape[axis] // n)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


@op("Slice")
def _slice(s, ins):
    x = ins[0]
    if s.opset < 10:
        starts, ends = list(s.attr("starts")), list(s.attr("ends"))
        axes, steps = s.attr("axes", None), None
        axes = None if axes is None else list(axes)
    else:
        starts, ends, axes, steps = ints(ins[1]), ints(ins[2]), ints(opt(ins, 3)), ints(opt(ins, 4))
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
