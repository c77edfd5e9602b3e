"""Pooling, reductions, ArgMax/ArgMin, Softmax, Pad and Resize (as `analysis/handlers/pool.py`)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import op
from .base import input_or_attr, ints, opt, spatial_pads, torch_pad

_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _pool_geometry(s, x, kernel, strides, dil):
    """Explicit begin pads, end pads extended to cover every output window, and output sizes."""
    begin, end = spatial_pads(s, x.shape[2:], kernel, strides, dil)
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


@op("MaxPool", "AveragePool", "LpPool")
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
        xp = F.pad(x, torch_pad(begin, ends), value=float("-inf") if x.is_floating_point() else low)
        return _crop(_MAXPOOL[nd](xp, kernel, strides, 0, dil), outs)
    if any(d != 1 for d in dil):
        s.fail("dilated average pooling")
    if s.op == "LpPool":
        p = s.attr("p", 2)
        xp = F.pad(torch.abs(x) ** p, torch_pad(begin, ends))
        total = _crop(_AVGPOOL[nd](xp, kernel, strides, 0), outs) * math.prod(kernel)
        return total ** (1.0 / p)
    xp = F.pad(x, torch_pad(begin, ends))
    # divisor: the window's elements inside the input (plus the explicit pads with count_include_pad)
    incl = bool(s.attr("count_include_pad", 0))
    region = [n + (b + e if incl else 0) for n, b, e in zip(x.shape[2:], begin, end)]
    lead = [0 if incl else b for b in begin]  # zeros before the counted region
    trail = [b + n + e - r - ld for b, n, e, r, ld in zip(begin, x.shape[2:], ends, region, lead)]
    mask = F.pad(torch.ones([1, 1] + region, dtype=x.dtype, device=x.device), torch_pad(lead, trail))
    num = _crop(_AVGPOOL[nd](xp, kernel, strides, 0), outs)
    den = _crop(_AVGPOOL[nd](mask, kernel, strides, 0), outs)
    return num / den


@op("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
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


@op(*_REDUCE, "ReduceProd")
def _reduce(s, ins):
    x = ins[0]
    axes = input_or_attr(s, ins, 1, "axes")
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


@op("ArgMax", "ArgMin")
def _arg(s, ins):
    x = ins[0]
    axis, keep = s.attr("axis", 0) % x.dim(), bool(s.attr("keepdims", 1))
    f = torch.argmax if s.op == "ArgMax" else torch.argmin
    if s.attr("select_last_index", 0):
        flipped = f(torch.flip(x, [axis]), dim=axis, keepdim=keep)
        return x.shape[axis] - 1 - flipped
    return f(x, dim=axis, keepdim=keep)


@op("Softmax", "LogSoftmax", "Hardmax")
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


@op("Pad")
def _pad(s, ins):
    x = ins[0]
    mode = s.attr("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if s.opset < 11:
        pads, value = list(s.attr("pads")), s.attr("value", 0.0)
    else:
        pads = ints(ins[1])
        value = opt(ins, 2)
        value = 0 if value is None else value.reshape(-1)[0].item()
    axes = ints(opt(ins, 3)) if s.opset >= 18 else None
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
        return F.pad(x, torch_pad(begin[first:], end[first:]), value=value)
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


@op("Resize", "Upsample")
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
        sc, sz = opt(ins, 2), opt(ins, 3)
        scales = sc.reshape(-1).tolist() if sc is not None and sc.numel() else None
        sizes = ints(sz) if sz is not None and sz.numel() else None
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
