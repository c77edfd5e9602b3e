"""Transformer zoo: small random transformer encoders exported to ONNX by the TorchScript exporter (opset
17) and the dynamo exporter (opset 18), cached on disk (docs/DESIGN.md, "Attention heads").

    build(cache_dir)             -> [TransformerModel]   (exports only what is missing)
    feeds(tm, batch, seed)       -> {input name: array}

- `minilm_s7`, `minilm_s16`: `models.minilm.MiniLM.random` (BERT: embeddings, separate Q/K/V, additive
  padding mask, softmax, exact-erf GELU MLP, post-LayerNorm, masked mean pooling and L2 normalisation) at
  sequence lengths 7 and 16 (both exporters fix the sequence length); inputs `input_ids`, `attention_mask`.
- `vit`: a ViT-style image encoder: patch-embedding Conv, class token, position embedding, pre-norm blocks
  with separate Q/K/V projections, attention `softmax(q @ kᵀ * scale) @ v` with head sizes read from
  `x.shape`, GELU MLP, final LayerNorm, a Linear head on the class token; input `input` [N, 3, 16, 16]
  (17 tokens). (The coverage zoo's ViT has a fused qkv projection.)
- `vit_sdpa`: the same with `scaled_dot_product_attention` (the TorchScript exporter scales Q and Kᵀ by
  √scale each, with the scale computed from `Shape`; the dynamo exporter's form is in UNSUPPORTED).
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import shutil
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import exporters, minilm

EXPORTERS = ("ts17", "dynamo18")
SEED = 0
VOCAB = 100


@dataclasses.dataclass
class TransformerModel:
    name: str
    exporter: str
    path: pathlib.Path
    seq: int            # tokens per sample
    text: bool          # inputs input_ids/attention_mask (else an image `input`)
    torch_module: nn.Module


class Block(nn.Module):
    def __init__(self, dim, heads, mlp, sdpa=False):
        super().__init__()
        self.sdpa = sdpa
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)

    def forward(self, x):
        b, n, c = x.shape
        h = self.ln_1(x)
        q, k, v = (f(h).reshape(b, n, self.heads, c // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.ln_2(x))))


class Vit(nn.Module):
    def __init__(self, image=16, patch=4, dim=24, heads=3, mlp=48, depth=2, ncls=10, sdpa=False):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, patch, patch)
        self.class_token = nn.Parameter(0.5 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.5 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp, sdpa) for _ in range(depth)])
        self.ln, self.head = nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, ncls)

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.ln(self.blocks(x))[:, 0])


def make_vit(sdpa: bool = False) -> Vit:
    torch.manual_seed(SEED)
    model = Vit(sdpa=sdpa)
    with torch.no_grad():  # weights that make every head and unit matter (torch's init is too small)
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "pos" not in name and "class_token" not in name:
                p.copy_(torch.randn(p.shape) / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape))
    return model.eval()


def make_minilm() -> minilm.MiniLM:
    return minilm.MiniLM.random(layers=2, hidden=32, heads=4, mlp=64, vocab=VOCAB, max_positions=32, seed=SEED)


SPECS = {"minilm_s7": (make_minilm, 7, True), "minilm_s16": (make_minilm, 16, True), "vit": (make_vit, 17, False),
         "vit_sdpa": (lambda: make_vit(sdpa=True), 17, False)}
# what the analysis does not follow: the dynamo exporter's scaled_dot_product_attention (K transposed by a
# Reshape that merges the batch and head axes) freezes its heads
UNSUPPORTED = {("vit_sdpa", "dynamo18")}


def default_cache_dir() -> pathlib.Path:
    """`models/cache/transformer-zoo-<key>` (older keys are removed when a new one is made)."""
    return exporters.keyed_cache_dir("transformer-zoo", (pathlib.Path(__file__), pathlib.Path(minilm.__file__)))


def _export(name: str, model: nn.Module, exporter: str, seq: int, text: bool, path: pathlib.Path) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        staged = pathlib.Path(tmp) / path.name
        if text:
            minilm.export(model, str(staged), exporter, seq_len=seq)
        else:
            x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(SEED))
            exporters.export(model, exporter, x, staged)
        data = pathlib.Path(str(staged) + ".data")
        if data.exists():
            shutil.move(str(data), str(path) + ".data")
        shutil.move(str(staged), str(path))


def architecture(tm: TransformerModel) -> tuple[int, int, int, int]:
    """(layers, hidden size, heads, MLP width) of a zoo encoder's torch module."""
    m = tm.torch_module
    if tm.text:
        c = m.config
        return c.layers, c.hidden, c.heads, c.mlp
    block = m.blocks[0]
    return len(m.blocks), block.q.in_features, block.heads, block.fc1.out_features


def export_text(model: nn.Module, directory, name: str, exporter: str, seq_len: int = 12) -> pathlib.Path:
    """A text encoder a test made, exported to `directory`/`name`_`exporter`.onnx (inputs of `seq_len` tokens)."""
    path = pathlib.Path(directory) / f"{name}_{exporter}.onnx"
    minilm.export(model, str(path), exporter, seq_len=seq_len)
    return path


def build(cache_dir, names=None, exporters_=EXPORTERS) -> list[TransformerModel]:
    cache_dir = pathlib.Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names or SPECS:
        make, seq, text = SPECS[name]
        model = make()
        for exp in exporters_:
            path = cache_dir / f"{name}_{exp}.onnx"
            if not path.exists():
                _export(name, model, exp, seq, text, path)
            out.append(TransformerModel(name, exp, path, seq, text, model))
    return out


def feeds(tm: TransformerModel, batch: int, seed: int, pad: bool = True) -> dict[str, np.ndarray]:
    """Random token ids with random lengths (the rest padding, mask 0) for the text models; Gaussian images
    with a random per-sample scale and offset for the image model."""
    rng = np.random.default_rng(seed)
    if not tm.text:
        x = rng.standard_normal((batch, 3, 16, 16)) * rng.uniform(0.5, 2.0, (batch, 1, 1, 1)) + \
            rng.standard_normal((batch, 1, 1, 1))
        return {"input": x.astype(np.float32)}
    ids = rng.integers(1, VOCAB, (batch, tm.seq)).astype(np.int64)
    lengths = rng.integers(1, tm.seq + 1, batch) if pad else np.full(batch, tm.seq)
    mask = (np.arange(tm.seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": np.where(mask == 1, ids, 0), "attention_mask": mask}
