"""ONNX Runtime's com.microsoft ops of its transformer optimizer's fused BERT graphs (as
`analysis/handlers/contrib.py`): the GELU family, SkipLayerNormalization, EmbedLayerNormalization and the
common forms of Attention (no past state, no attention bias; a mask of key lengths or a raw 0/1 mask)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import op
from .base import opt
from .elementwise import layer_norm

MS = "com.microsoft"


@op("Gelu", domain=MS)
def _gelu(s, ins):
    return F.gelu(ins[0])


@op("BiasGelu", domain=MS)
def _bias_gelu(s, ins):
    return F.gelu(ins[0] + ins[1])


@op("FastGelu", domain=MS)
def _fast_gelu(s, ins):
    x = ins[0] if opt(ins, 1) is None else ins[0] + ins[1]
    return F.gelu(x, approximate="tanh")


@op("QuickGelu", domain=MS)
def _quick_gelu(s, ins):
    return ins[0] * torch.sigmoid(s.attr("alpha", 1.702) * ins[0])


def _normalised(s, x, gamma, beta, simplified: bool):
    """LayerNormalization over the last axis, or its simplified form (RMS, no mean taken away, no beta)."""
    eps = s.attr("epsilon", 1e-12)
    if not simplified:
        return layer_norm(x, gamma, beta, [-1], eps)
    inv = torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    return x * inv * gamma, torch.zeros_like(x[..., :1]), inv


@op("SkipLayerNormalization", "SkipSimplifiedLayerNormalization", domain=MS)
def _skip_layernorm(s, ins):
    simplified = s.op == "SkipSimplifiedLayerNormalization"
    beta, bias = (None, opt(ins, 3)) if simplified else (opt(ins, 3), opt(ins, 4))
    total = ins[0] + ins[1] if bias is None else ins[0] + ins[1] + bias
    y, mean, inv = _normalised(s, total, ins[2], beta, simplified)
    return [y, mean, inv, total][:max(1, s.n_out)]


@op("EmbedLayerNormalization", domain=MS)
def _embed_layernorm(s, ins):
    ids, segments, words, positions = ins[0], opt(ins, 1), ins[2], ins[3]
    seg_table, gamma, beta, mask, position_ids = opt(ins, 4), ins[5], ins[6], opt(ins, 7), opt(ins, 8)
    seq = ids.shape[1]
    if position_ids is None:
        position_ids = torch.arange(seq, device=ids.device).unsqueeze(0)
    total = words[ids.long()] + positions[position_ids.long()].expand(ids.shape[0], -1, -1)
    if seg_table is not None and segments is not None:
        total = total + seg_table[segments.long()]
    y, _, _ = _normalised(s, total, gamma, beta, False)
    index = (mask.to(torch.int32).sum(1, dtype=torch.int32) if mask is not None
             else torch.zeros(ids.shape[0], dtype=torch.int32, device=ids.device))
    return [y, index, total][:max(1, s.n_out)]


@op("Attention", domain=MS)
def _attention(s, ins):
    x, w, b, mask = ins[0], ins[1], opt(ins, 2), opt(ins, 3)
    if any(opt(ins, i) is not None for i in range(4, len(ins))):
        s.fail("past state or attention bias")
    heads = int(s.attr("num_heads"))
    sizes = list(s.attr("qkv_hidden_sizes", [w.shape[1] // 3] * 3))
    qkv = x @ w if b is None else x @ w + b
    q, k, v = torch.split(qkv, sizes, dim=-1)
    batch, seq = x.shape[0], x.shape[1]

    def split(t):
        return t.reshape(batch, seq, heads, t.shape[-1] // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scale = s.attr("scale", 0.0) or 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-1, -2)) * scale
    fill = s.attr("mask_filter_value", -10000.0)
    if mask is not None:
        if mask.dim() == 1 and mask.shape[0] == batch:   # key lengths: the keys from there on are padding
            keep = torch.arange(seq, device=x.device).unsqueeze(0) < mask.unsqueeze(1)
        elif mask.dim() == 2 and mask.shape == (batch, seq):   # raw mask, 1 for real tokens
            keep = mask != 0
        else:
            s.fail(f"a mask_index of shape {tuple(mask.shape)}")
        scores = scores + (~keep).to(scores.dtype)[:, None, None, :] * fill
    if s.attr("unidirectional", 0):
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, fill)
    out = torch.softmax(scores, -1) @ v
    return out.transpose(1, 2).reshape(batch, seq, -1)
