"""Conv and ConvTranspose (1-, 2- and 3-D, grouped, every auto_pad)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import op
from .base import opt, spatial_pads, torch_pad

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}



@op("Conv")
def _conv(s, ins):
    x, w, b = ins[0], ins[1], opt(ins, 2)
    nd = w.dim() - 2
    if nd not in _CONV:
        s.fail(f"{nd}-D convolution")
    if nd == 2 and x.device.type == "cpu":
        # oneDNN's CPU convolutions are 3-4x faster on channels-last activations (ImageNet MobileNetV2,
        # batch 32, 2 cores); the values are the same, later ops keep or drop the layout as they need
        x = x.contiguous(memory_format=torch.channels_last)
    kernel = list(w.shape[2:])
    strides = list(s.attr("strides", [1] * nd))
    dil = list(s.attr("dilations", [1] * nd))
    begin, end = spatial_pads(s, x.shape[2:], kernel, strides, dil)
    if begin == end:
        padding = begin
    else:
        x, padding = F.pad(x, torch_pad(begin, end)), [0] * nd
    return _CONV[nd](x, w, b, strides, padding, dil, int(s.attr("group", 1)))


@op("ConvTranspose")
def _conv_transpose(s, ins):
    x, w, b = ins[0], ins[1], opt(ins, 2)
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
