"""Models fused by ONNX Runtime's transformer optimizer (com.microsoft ops; docs/DESIGN.md, "ONNX Runtime's
fused transformer ops"): the GELU family keeps an MLP's width a group, SkipLayerNormalization freezes the
stream, a fused Attention freezes its heads and says why.

Oracles: the pruned graph equals the masked reference for random selections; the twin equals ONNX Runtime on
the fused ops (padding included) and its gated output equals the masked reference; a prune writes a model
that loads from disk; the real optimizer's fusion of the zoo's MiniLM is analysed as the graph says."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import transformer_zoo as tz
from helpers import load_in_ort, oracle_error, rel_err, run
from onnx import TensorProto, helper, numpy_helper

from onnxprune import load_model, prune, save_model
from onnxprune.analysis import Analysis
from onnxprune.rewrite import Rewriter
from onnxprune.selection import counts_for_ratio, select
from onnxprune.twin import Twin

MS = "com.microsoft"
D, F = 8, 16


def _mlp(op: str, bias_in_op: bool) -> onnx.ModelProto:
    """x[B, S, D] -> MatMul -> (Add bias) -> op -> MatMul -> SkipLayerNormalization(·, x) -> y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((D, F)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(F).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((F, D)).astype(np.float32) / 4, "w2"),
             numpy_helper.from_array(rng.random(D).astype(np.float32) + 0.5, "gamma"),
             numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1")]
    if bias_in_op:
        nodes.append(helper.make_node(op, ["h", "b1"], ["g"], name="act", domain=MS))
    else:
        nodes += [helper.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
                  helper.make_node(op, ["hb"], ["g"], name="act", domain=MS)]
    nodes += [helper.make_node("MatMul", ["g", "w2"], ["o"], name="fc2"),
              helper.make_node("SkipLayerNormalization", ["o", "x", "gamma", "beta", "b2"], ["y"], name="skipln",
                               domain=MS, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


MLPS = {"BiasGelu": ("BiasGelu", True), "FastGelu with bias": ("FastGelu", True),
        "FastGelu": ("FastGelu", False), "Gelu": ("Gelu", False), "QuickGelu": ("QuickGelu", False)}


def _x(batch: int, seed: int, seq: int = 5) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, seq, D)).astype(np.float32)}


@pytest.mark.parametrize("case", sorted(MLPS))
def test_gelu_family_keeps_the_mlp_width_a_group_and_skip_layernorm_freezes_the_stream(case):
    model = _mlp(*MLPS[case])
    a = Analysis(model)
    assert [g.channels for g in a.prunable] == [F]
    stream = [g for g in a.groups if g.frozen]
    assert len(stream) == 1 and stream[0].channels == D
    assert any("SkipLayerNormalization" in r and "hidden size cannot shrink" in r for r in stream[0].reasons)
    assert oracle_error(a, _x) <= 1e-5


@pytest.mark.parametrize("case", sorted(MLPS))
def test_twin_runs_the_gelu_family_and_skip_layernorm(case):
    model = _mlp(*MLPS[case])
    a = Analysis(model)
    twin = Twin(a)
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=1, random_gamma=True)
    keep, gamma = sel.class_arrays(a)
    feeds = _x(3, 2)
    with torch.no_grad():
        assert rel_err([twin(feeds)[0].numpy()], run(model, feeds)) <= 1e-5
        gated = twin(feeds, twin.gates_for(sel))[0].numpy()
    assert rel_err([gated], run(Rewriter(a, keep, gamma, masked=True).run(), feeds)) <= 1e-5
    assert rel_err([gated], run(model, feeds)) > 1e-3


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """The zoo's MiniLM (TorchScript export) fused by ONNX Runtime's transformer optimizer."""
    from onnxruntime.transformers import optimizer
    tm = {(m.name, m.exporter): m for m in tz.build(tz.default_cache_dir(), names=["minilm_s16"],
                                                    exporters_=("ts17",))}[("minilm_s16", "ts17")]
    layers, hidden, heads, _ = tz.architecture(tm)
    path = tmp_path_factory.mktemp("fused") / "fused.onnx"
    optimizer.optimize_model(str(tm.path), model_type="bert", num_heads=heads, hidden_size=hidden) \
        .save_model_to_file(str(path))
    return tm, path


def test_the_optimizer_s_fusion_of_minilm_prunes_its_mlps_and_freezes_its_fused_heads(fused):
    tm, path = fused
    model = load_model(path)
    ops = {n.op_type for n in model.graph.node if n.domain == MS}
    assert {"Attention", "SkipLayerNormalization"} <= ops and ops & {"BiasGelu", "FastGelu", "Gelu"}, ops
    a = Analysis(model)
    layers, _, _, mlp = tz.architecture(tm)
    assert [g.channels for g in a.prunable] == [mlp] * layers
    reasons = [r for g in a.groups if g.frozen for r in g.reasons]
    assert any("fused attention" in r and "before fusing" in r for r in reasons), reasons
    assert oracle_error(a, lambda b, s: tz.feeds(tm, b, s)) <= 1e-4


def test_twin_runs_the_fused_minilm_with_padding(fused):
    tm, path = fused
    model = load_model(path)
    a = Analysis(model)
    twin = Twin(a)
    feeds = tz.feeds(tm, 3, 5)
    assert (feeds["attention_mask"] == 0).any(), "the oracle covers padded keys"
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=2, random_gamma=True)
    keep, gamma = sel.class_arrays(a)
    with torch.no_grad():
        assert rel_err([twin(feeds)[0].numpy()], run(model, feeds)) <= 1e-4
        gated = twin(feeds, twin.gates_for(sel))[0].numpy()
    assert rel_err([gated], run(Rewriter(a, keep, gamma, masked=True).run(), feeds)) <= 1e-4


def test_prune_of_the_fused_minilm_writes_a_model_that_loads(fused, tmp_path):
    tm, path = fused
    data = {k: np.concatenate([tz.feeds(tm, 8, s)[k] for s in range(4)]) for k in ("input_ids", "attention_mask")}
    pruned, report = prune(str(path), data, flops=0.8, round_to=1, quiet=True)
    assert report.macs_ratio <= 0.8 + 0.02
    assert report.allocate == "output" and "output_unavailable" not in report.allocation, \
        "the twin runs the fused ops, so the output-aware allocation does not fall back to uniform"
    out = tmp_path / "pruned.onnx"
    save_model(pruned, out)
    feeds = tz.feeds(tm, 3, 9)
    got = load_in_ort(out).run(None, feeds)[0]
    want = run(load_model(path), feeds)[0]
    assert got.shape == want.shape and np.isfinite(got).all()
