"""torch's own attention modules and decoder-style attention, exported by both exporters: nn.MultiheadAttention
and nn.TransformerEncoder (which run sequence-first, [S, B, E], and merge the batch with the tokens or heads
in Reshapes), a causal mask written with `masked_fill` (a `Where` over the scores, built by `Trilu`) and
attention written with `einsum` (docs/DESIGN.md, "Input shapes" and "Attention heads")."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from helpers import oracle_error
from torch import nn

from models.exporters import export
from onnxprune import load_model
from onnxprune.analysis import Analysis
from onnxprune.cli import main as cli
from onnxprune.twin import Twin

S, E, H, F = 16, 32, 4, 64


class Encoder(nn.Module):
    """torch's TransformerEncoder (two layers, batch-first at its interface) and a classifier on the mean."""
    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(E, 10)

    def forward(self, x):
        return self.head(self.enc(x).mean(1))


class Causal(nn.Module):
    """A decoder block: separate Q/K/V, causal mask by masked_fill, optionally einsum products."""
    def __init__(self, einsum=False):
        super().__init__()
        self.einsum = einsum
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))
        self.fc1, self.fc2, self.head = nn.Linear(E, F), nn.Linear(F, E), nn.Linear(E, 10)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).reshape(b, n, H, E // H).transpose(1, 2) for f in (self.q, self.k, self.v))
        s = torch.einsum("bhqd,bhkd->bhqk", q, k) if self.einsum else q @ k.transpose(-2, -1)
        s = (s * (E // H) ** -0.5).masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        p = s.softmax(-1)
        a = torch.einsum("bhqk,bhkd->bhqd", p, v) if self.einsum else p @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, n, E))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_attention")
    out = {}
    for name, make in (("encoder", Encoder), ("causal", Causal), ("einsum", lambda: Causal(einsum=True))):
        for exp in ("ts17", "dynamo18"):
            torch.manual_seed(0)
            path = root / f"{name}_{exp}.onnx"
            export(make().eval(), exp, torch.randn(2, S, E), path)
            out[name, exp] = path
    return out


def _feeds(batch, seed):
    return {"input": np.random.default_rng(seed).standard_normal((batch, S, E)).astype(np.float32)}


@pytest.mark.parametrize("exp", ["ts17", "dynamo18"])
def test_sequence_first_attention_has_its_macs_counted_per_sample(exported, exp):
    a = Analysis(load_model(exported["encoder", exp]))
    assert not a.unknown_costs, a.unknown_cost_reason()
    # per layer and sample: the fused in-projection (S·E·3E), Q·Kᵀ and P·V (S·S·E each), the out-projection (a
    # Gemm on the [S·B, E] rows: S·E·E), the MLP (2·S·E·F); then the classifier
    want = 2 * (S * E * 3 * E + 2 * S * S * E + S * E * E + 2 * S * E * F) + E * 10
    assert a.total_macs == want
    assert sorted(c.macs for c in a.costs if c.op == "Gemm")[-1] == S * E * E
    assert oracle_error(a, _feeds) <= 1e-5


@pytest.mark.parametrize("exp", ["ts17", "dynamo18"])
def test_a_flops_target_prunes_torch_s_encoder_and_the_output_loads(exported, exp, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=_feeds(64, 1)["input"])
    out = tmp_path / "pruned.onnx"
    r = CliRunner().invoke(cli, ["prune", str(exported["encoder", exp]), "-o", str(out), "--calib", str(calib),
                                 "--flops", "0.7", "--round-to", "1"])
    assert r.exit_code == 0, r.output
    a = Analysis(onnx.load(str(out)))
    assert abs(a.total_macs / Analysis(load_model(exported["encoder", exp])).total_macs - 0.7) <= 0.02
    y = ort.InferenceSession(str(out)).run(None, _feeds(3, 2))[0]
    assert y.shape == (3, 10) and np.isfinite(y).all()


@pytest.mark.parametrize("exp", ["ts17", "dynamo18"])
def test_heads_behind_a_causal_mask_prune_and_equal_the_masked_reference(exported, exp):
    a = Analysis(load_model(exported["causal", exp]))
    heads = [g for g in a.groups if g.kind == "heads"]
    assert len(heads) == 1 and not heads[0].frozen and heads[0].channels == H, heads[0].reasons
    assert oracle_error(a, _feeds) <= 1e-5


@pytest.mark.parametrize("name", ["causal", "einsum"])
def test_the_twin_runs_trilu_and_einsum_as_onnx_runtime_does(exported, name):
    path = exported[name, "ts17" if name == "causal" else "dynamo18"]
    a = Analysis(load_model(path))
    ops = {n.op for n in a.graph.nodes}
    assert ("Trilu" if name == "causal" else "Einsum") in ops
    feeds = _feeds(3, 5)
    with torch.no_grad():
        y = Twin(a)(feeds)[0].numpy()
    ref = ort.InferenceSession(str(path)).run(None, feeds)[0]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_a_symbol_that_also_sizes_another_axis_is_not_taken_for_the_batch():
    """`pos` [seq, 8] beside `x` [batch, seq, 8]: `seq` opens an input but is not the batch, so the MatMul's
    rows stay unknown (a --flops target asks for the shape) instead of counting one row per sample."""
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "pos"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8]),
         helper.make_tensor_value_info("pos", TensorProto.FLOAT, ["seq", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = Analysis(model)
    assert [c.node for c in a.unknown_costs] == [a.graph.nodes[1].name]
    sized = Analysis(model, input_shapes={"x": (1, 5, 8), "pos": (5, 8)})
    assert not sized.unknown_costs and sized.total_macs == 5 * 8 * 4
