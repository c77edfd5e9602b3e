"""Attention heads and MLP widths of transformer encoders, read as heads (`attention="heads"`; docs/DESIGN.md,
"Attention heads"; the dims within heads are tests/test_head_dims.py): small random
BERT encoders (MiniLM layout, sequence lengths 7 and 16) and a ViT-style image encoder, each exported by the
TorchScript exporter (opset 17) and the dynamo exporter (opset 18).

Oracles: the pruned graph equals the torch module with the removed heads' and MLP units' input columns of
the output projections zeroed (independent of the rewriter's masked reference), and equals the masked
reference for random γ; keep-all is the identity; the analysis's MACs are the closed-form count of the
architecture; padding tokens do not reach the statistics; a planted block whose output depends on two
heads only is solved by greedy selection."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import transformer_zoo as tz
from helpers import rel_err, run

from onnxprune import load_model, prune
from onnxprune.analysis import Analysis
from onnxprune.analysis.cost import macs, model_macs
from onnxprune.calibration import load_calibration
from onnxprune.calibration.taps import Tap
from onnxprune.options import CalibrationOptions, OptionError
from onnxprune.rewrite import Rewriter
from onnxprune.selection import Selection, counts_for_ratio, select
from onnxprune.statistics import consumers_of
from onnxprune.statistics.collector import Collector

CASES = [(name, exp) for name in tz.SPECS for exp in tz.EXPORTERS if (name, exp) not in tz.UNSUPPORTED]


@pytest.fixture(scope="session")
def transformers():
    return {(m.name, m.exporter): m for m in tz.build(tz.default_cache_dir())}


def _load(transformers, name, exp):
    tm = transformers[(name, exp)]
    return tm, load_model(tm.path)


def _linears(module, text: bool) -> list:
    """The output projections and MLP output layers of a torch module, in order."""
    if text:
        return [lin for layer in module.encoder.layer for lin in (layer.attention.output.dense, layer.output.dense)]
    return [lin for b in module.blocks for lin in (b.proj, b.fc2)]


def _torch_masked(tm, a: Analysis, keep: np.ndarray) -> torch.nn.Module:
    """A copy of the torch module with the input columns of the removed channels zeroed in every consumer
    (output projections and MLP output layers): what pruning heads and MLP units means. Each consumer
    MatMul is matched to its Linear by its weight."""
    import copy
    model = copy.deepcopy(tm.torch_module)
    originals, copies = _linears(tm.torch_module, tm.text), _linears(model, tm.text)
    for e in a.edits:
        if e.kind != "consumer":
            continue
        w = np.asarray(a.graph.nodes[e.node].inputs[1].values).T
        match = [i for i, lin in enumerate(originals)
                 if lin.weight.shape == w.shape and np.allclose(lin.weight.detach().numpy(), w)]
        if not match:
            continue  # a consumer of frozen channels (Q/K/V, MLP input layers, the head)
        with torch.no_grad():
            copies[match[0]].weight[:, ~keep[a.class_of[e.labels]]] = 0.0
    return model


def _torch_run(model, tm, feeds) -> np.ndarray:
    with torch.no_grad():
        if tm.text:
            return model(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()
        return model(torch.from_numpy(feeds["input"])).numpy()


@pytest.mark.parametrize("name,exp", CASES)
def test_heads_and_mlp_widths_are_groups(transformers, name, exp):
    tm, model = _load(transformers, name, exp)
    layers, hidden, heads, mlp = tz.architecture(tm)
    a = Analysis(model)
    head_groups = [g for g in a.prunable if g.kind == "heads"]
    mlp_groups = [g for g in a.prunable if g.kind == "channels"]
    assert len(head_groups) == layers and len(mlp_groups) == layers, [(g.kind, g.channels) for g in a.prunable]
    for g in head_groups:
        assert (g.channels, g.unit, len(g.producers), len(g.consumers)) == (heads, hidden // heads, 3, 1)
    assert all(g.channels == mlp and g.unit == 1 for g in mlp_groups)
    if tm.text:  # the residual stream: one group, frozen by the LayerNorms over the hidden size
        frozen = [g for g in a.groups if g.frozen]
        assert len(frozen) == 1 and frozen[0].channels == hidden
        assert sum("LayerNormalization" in r and "channel axis" in r for r in frozen[0].reasons) == 2 * layers + 1


@pytest.mark.parametrize("name,exp", CASES)
def test_macs_are_the_architecture_s(transformers, name, exp):
    """Projections, both attention products (S·S·D per head each) and the MLP, counted independently from
    the architecture, before and after keeping some heads and MLP units."""
    tm, model = _load(transformers, name, exp)
    layers, h, heads, mlp = tz.architecture(tm)
    s = tm.seq
    a = Analysis(model)
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=3)
    keep, _ = sel.class_arrays(a)
    kept = {g.kind: [] for g in a.prunable}
    for g in a.prunable:
        kept[g.kind].append(len(sel.kept[g.id]))

    def layer(hk, mk):
        d = h // heads
        return 4 * s * h * hk * d + 2 * s * s * hk * d + 2 * s * h * mk
    patch = 0 if tm.text else 16 * h * 3 * 4 * 4 + h * 10  # the patch-embedding Conv and the head
    assert a.total_macs == layers * layer(heads, mlp) + patch
    assert macs(a, keep) == sum(layer(hk, mk) for hk, mk in zip(kept["heads"], kept["channels"])) + patch


@pytest.mark.parametrize("name,exp", CASES)
def test_pruned_equals_torch_with_removed_heads_zeroed(transformers, name, exp):
    tm, model = _load(transformers, name, exp)
    a = Analysis(model)
    assert len(a.prunable) == 2 * tz.architecture(tm)[0], "every layer's heads and MLP width are pruned"
    for seed, ratio in ((0, 0.3), (1, 0.6)):
        sel = select(a, counts_for_ratio(a, ratio), "random", seed=seed)
        keep, gamma = sel.class_arrays(a)
        pruned = Rewriter(a, keep, gamma).run()
        onnx.checker.check_model(pruned, full_check=True)
        reference = _torch_masked(tm, a, keep)
        for batch in (1, 3):
            feeds = tz.feeds(tm, batch, seed)
            got, want = run(pruned, feeds)[0], _torch_run(reference, tm, feeds)
            assert rel_err([got], [want]) <= 1e-4, (seed, batch)
        moved = rel_err([_torch_run(reference, tm, feeds)], [_torch_run(tm.torch_module, tm, feeds)])
        assert moved > 1e-3, "the selection changes the output (the oracle is not vacuous)"


@pytest.mark.parametrize("name,exp", CASES)
def test_pruned_equals_masked_reference_and_keep_all_is_identity(transformers, name, exp):
    tm, model = _load(transformers, name, exp)
    a = Analysis(model)
    assert len(a.prunable) == 2 * tz.architecture(tm)[0], "every layer's heads and MLP width are pruned"
    for seed, ratio in ((0, 0.3), (1, 0.5), (2, 0.8)):
        sel = select(a, counts_for_ratio(a, ratio), "random", seed=seed, random_gamma=True)
        keep, gamma = sel.class_arrays(a)
        pruned = Rewriter(a, keep, gamma).run()
        masked = Rewriter(a, keep, gamma, masked=True).run()
        for batch in (1, 3):
            feeds = tz.feeds(tm, batch, seed)
            assert rel_err(run(pruned, feeds), run(masked, feeds)) <= 1e-4
        assert abs(model_macs(pruned) - macs(a, keep)) <= 1e-6 * a.total_macs
    everything = Selection({g.id: np.arange(g.channels) for g in a.prunable},
                           {g.id: np.ones(g.channels) for g in a.prunable})
    keep, gamma = everything.class_arrays(a)
    feeds = tz.feeds(tm, 3, 0)
    assert rel_err(run(Rewriter(a, keep, gamma).run(), feeds), run(model, feeds)) <= 1e-5


def _stats(model, data, token_mask, max_positions=64):
    """Per group (in order), per consumer: the streamed statistics on the original network."""
    a = Analysis(model)
    cal = load_calibration(data, a.model, holdout=0.0)
    out = []
    for g in a.prunable:
        cons = consumers_of(a, g)
        col = Collector(cons, CalibrationOptions(batch_size=4, max_positions=max_positions), seed=0,
                        token_mask=token_mask)
        tap = Tap(a.model, [c.input for c in cons] + [c.output for c in cons])
        col.run(cal, tap, tap, "test")
        out.append([col.stats["calib"][c.node] for c in cons])
    return out


def test_a_dict_of_several_inputs_calibrates_each_input_with_its_own_rows(transformers):
    """In-memory calibration of a two-input model: every batch holds each input's own rows (a generator per
    input built in a comprehension used to read the last input's array for all of them)."""
    tm, model = _load(transformers, "minilm_s16", "ts17")
    feeds = tz.feeds(tm, 11, 0)
    cal = load_calibration(feeds, model, holdout=0.0)
    for first, batch in cal.batches(4, "calib"):
        for name, values in feeds.items():
            assert np.array_equal(batch[name], values[first:first + 4]), (name, first)


def _same(a, b) -> bool:
    return all(x.rows == y.rows and torch.allclose(x.A, y.A, rtol=1e-5, atol=1e-6 * float(x.A.abs().max()))
               and torch.allclose(x.B, y.B, rtol=1e-5, atol=1e-6 * float(x.B.abs().max()))
               and x.yy == pytest.approx(y.yy, rel=1e-6)
               for ga, gb in zip(a, b) for x, y in zip(ga, gb))


def test_padding_tokens_stay_out_of_the_statistics(transformers):
    """The same sentences (at most 7 tokens) fed to the 7-token and the 16-token export of one encoder: with
    the padding left out, every consumer sees the same rows, one per real token. Sampling 3 positions per
    sentence draws among the real tokens only: changing the padding's token ids changes nothing. With the
    padding rows included, both comparisons differ (the test can fail)."""
    tm7, m7 = _load(transformers, "minilm_s7", "ts17")
    tm16, m16 = _load(transformers, "minilm_s16", "dynamo18")
    f7 = tz.feeds(tm7, 10, 5)
    f16 = {k: np.concatenate([v, np.zeros((10, 16 - 7), np.int64)], 1) for k, v in f7.items()}
    short, long = _stats(m7, f7, "attention_mask"), _stats(m16, f16, "attention_mask")
    assert all(st.rows == f7["attention_mask"].sum() for group in long for st in group)
    assert _same(short, long)
    other = dict(f16, input_ids=np.where(f16["attention_mask"] == 1, f16["input_ids"],
                                         np.random.default_rng(1).integers(1, tz.VOCAB, (10, 16))))
    sampled = _stats(m16, f16, "attention_mask", 3)
    assert all(st.rows == np.minimum(f7["attention_mask"].sum(1), 3).sum() for group in sampled for st in group)
    assert _same(sampled, _stats(m16, other, "attention_mask", 3))
    with_padding = _stats(m16, f16, None)
    assert with_padding[0][0].rows == 10 * 16 and not _same(with_padding, long)
    assert not _same(_stats(m16, f16, None, 3), _stats(m16, other, None, 3))


def test_output_cache_with_a_token_mask_holds_the_real_tokens_rows(transformers):
    """With padding left out, each sample keeps a different number of rows: the cache of the original's
    consumer outputs (per-sample offsets) gives, for any batch, the rows `features` pairs with its inputs when
    the original is tapped directly, and statistics collected from it equal those collected from the tap."""
    from onnxprune.pipeline.pruner import visiting_order
    from onnxprune.statistics.output_cache import OutputCache
    tm7, _ = _load(transformers, "minilm_s7", "ts17")
    _, m = _load(transformers, "minilm_s16", "dynamo18")
    data = {k: np.concatenate([v, np.zeros((9, 16 - 7), np.int64)], 1) for k, v in tz.feeds(tm7, 9, 5).items()}
    a = Analysis(m)
    cal = load_calibration(data, a.model, holdout=0.0)
    cs = list({c.node: c for g in visiting_order(a) for c in consumers_of(a, g)}.values())
    shapes = {t.name: t.shape for t in a.graph.tensors().values()}
    plan = OutputCache.plan(cs, shapes, 3, cal.size)
    assert plan is not None
    cache = OutputCache.build(cal, a.model, cs, shapes, plan, 2, 3, 0, "attention_mask")
    real = np.minimum(data["attention_mask"].sum(1), 3)
    assert len(set(real.tolist())) > 1   # samples keep different numbers of rows
    tap = Tap(a.model, [c.input for c in cs] + [c.output for c in cs])
    for first in (0, 4):
        batch = {k: v[first:first + 4] for k, v in data.items()}
        out = tap(batch)
        for c in cs:
            _, y = c.features(out[c.input], out[c.output], first, 3, 0, batch["attention_mask"])
            got = cache.rows(c.node, first, 4)
            assert len(got) == real[first:first + 4].sum()
            np.testing.assert_allclose(got.numpy(), y.numpy(), rtol=1e-6, atol=1e-6)
    g = a.prunable[0]
    cons = consumers_of(a, g)
    stats = []
    for outputs in (Tap(a.model, [c.output for c in cons]), cache):
        col = Collector(cons, CalibrationOptions(batch_size=4, max_positions=3), seed=0, token_mask="attention_mask")
        col.run(cal, Tap(a.model, [c.input for c in cons]), outputs, "test")
        stats.append([[col.stats["calib"][c.node] for c in cons]])
    assert _same(*stats)


def _planted(tmp_path, exporter):
    """A one-layer encoder of 6 heads whose attention output depends on heads 1 and 4 only: the others'
    value projections are zero, while their output-projection columns are the largest (so magnitude
    would keep them)."""
    model = tz.minilm.MiniLM.random(layers=1, hidden=48, heads=6, mlp=32, vocab=tz.VOCAB, max_positions=16, seed=1)
    attn = model.encoder.layer[0].attention
    d = 8
    with torch.no_grad():
        for h in (0, 2, 3, 5):
            attn.self.value.weight[h * d:(h + 1) * d] = 0.0
            attn.self.value.bias[h * d:(h + 1) * d] = 0.0
            attn.output.dense.weight[:, h * d:(h + 1) * d] *= 10.0
    return tz.export_text(model, tmp_path, "planted", exporter)


@pytest.mark.parametrize("exp", tz.EXPORTERS)
def test_planted_heads_are_found_first_and_reach_zero_loss(tmp_path, exp):
    path = _planted(tmp_path, exp)
    a = Analysis(load_model(path))
    (g,) = [g for g in a.prunable if g.kind == "heads"]
    out_proj = next(e for e in a.edits if e.kind == "consumer" and a.graph.nodes[e.node].name == g.consumers[0])
    head_of_class = {int(c): f // 8 for f, c in enumerate(a.class_of[out_proj.labels])}  # its input is head-major

    def kept_heads(rg):
        return sorted(head_of_class[int(g.classes[i])] for i in rg.kept)
    feeds = tz.feeds(tz.TransformerModel("planted", exp, path, 12, True, None), 64, 0)
    for method in ("greedy-local", "greedy-omp"):
        pruned, report = prune(path, feeds, method=method, keep_ratio=1.0, keep={g.id: 2}, attention="heads")
        rg = report.groups[g.id]
        assert kept_heads(rg) == [1, 4], (method, rg.kept)
        if method == "greedy-local":
            assert rg.curve[2] <= 1e-9 < rg.curve[1]
        assert rg.err_calib <= 1e-9
        assert rel_err(run(pruned, feeds), run(load_model(path), feeds)) <= 1e-4
    _, report = prune(path, feeds, method="magnitude", refit="none", keep_ratio=1.0, keep={g.id: 2}, attention="heads")
    assert kept_heads(report.groups[g.id]) != [1, 4], "magnitude is fooled (the test is not vacuous)"


def test_dynamo_scaled_dot_product_attention_freezes_and_says_why(transformers):
    """The dynamo exporter transposes K of scaled_dot_product_attention by a Reshape that merges the batch
    and head axes: the heads freeze, the reason names the Reshape; the MLP widths stay prunable."""
    tm, model = _load(transformers, "vit_sdpa", "dynamo18")
    a = Analysis(model)
    assert [g.kind for g in a.prunable] == ["channels", "channels"]
    assert any("Reshape" in r and "batch axis" in r for g in a.groups if g.frozen for r in g.reasons)


@pytest.mark.parametrize("name,exp", [("minilm_s16", "ts17"), ("minilm_s7", "dynamo18"), ("vit", "ts17"),
                                      ("vit", "dynamo18")])
def test_twin_runs_the_transformer_and_its_gates_are_the_masked_reference(transformers, name, exp):
    """Global imitation needs the twin: Erf, LayerNormalization, Softmax, Where/Expand/ConstantOfShape..."""
    from onnxprune.twin import Twin
    tm, model = _load(transformers, name, exp)
    a = Analysis(model)
    twin = Twin(a)
    sel = select(a, counts_for_ratio(a, 0.5), "random", seed=4, random_gamma=True)
    keep, gamma = sel.class_arrays(a)
    feeds = tz.feeds(tm, 3, 4)
    with torch.no_grad():
        assert rel_err([twin(feeds)[0].numpy()], run(model, feeds)) <= 1e-4
        gated = twin(feeds, twin.gates_for(sel))[0].numpy()
    assert rel_err([gated], run(Rewriter(a, keep, gamma, masked=True).run(), feeds)) <= 1e-4
    assert rel_err([gated], run(model, feeds)) > 1e-3


def test_global_methods_on_an_encoder_use_mse_and_compare_candidates(transformers):
    tm, model = _load(transformers, "minilm_s16", "dynamo18")
    feeds = tz.feeds(tm, 48, 1)
    pruned, report = prune(model, feeds, method="greedy-combined", flops=0.6, global_samples=16, attention="heads")
    assert report.output_loss == "mse" and report.token_mask == "attention_mask"
    assert "attention_mask" in report.summary()
    for g in report.groups:
        if not g.frozen:
            assert g.method.startswith("combined:") and len(g.candidates) == 2
    assert abs(report.macs_ratio - 0.6) <= 0.02 * 0.6
    assert rel_err(run(pruned, feeds), run(api_masked(report), feeds)) <= 1e-4


def api_masked(report):
    from onnxprune import masked_reference
    return masked_reference(report)


def test_group_kind_prunes_one_kind_only(transformers):
    tm, model = _load(transformers, "minilm_s16", "ts17")
    feeds = tz.feeds(tm, 40, 2)
    for kind in ("heads", "channels"):
        _, report = prune(model, feeds, keep_ratio=0.5, group_kind=kind, round_to=1, attention="heads")
        for g in report.groups:
            if not g.frozen:
                assert g.kept_count == (g.channels // 2 if g.kind == kind else g.channels), (kind, g.kind)
    with pytest.raises(OptionError, match="group_kind"):
        prune(model, None, method="magnitude", refit="none", keep_ratio=0.5, group_kind="bogus")


def test_round_to_counts_the_kept_width_of_heads(transformers):
    """Heads of D = 8: --round-to 8 allows any head count, 16 an even one; MLP units as before."""
    from onnxprune.selection import counts_for_ratio as ratio_counts
    tm, model = _load(transformers, "minilm_s16", "ts17")
    a = Analysis(model)
    heads = [g for g in a.prunable if g.kind == "heads"]
    assert all(g.count_step(8) == 1 and g.count_step(16) == 2 and g.count_step(1) == 1 for g in heads)
    for round_to, want_heads, want_mlp in ((8, 1, 16), (16, 2, 16)):
        counts = ratio_counts(a, 0.25, round_to=round_to)
        assert all(counts[g.id] == want_heads for g in heads)
        assert all(counts[g.id] == want_mlp for g in a.prunable if g.kind == "channels")


def test_embedding_metrics_and_eval_of_a_two_input_model(transformers, tmp_path):
    from click.testing import CliRunner

    from onnxprune.cli import main
    from onnxprune.report.evaluate import compare, embedding_metrics
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 5))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    same = embedding_metrics(a, 3.0 * a @ q @ q.T)  # the same directions
    assert same["mean_cosine"] == pytest.approx(1.0) and same["nn_agreement"] == 1.0
    rotated = embedding_metrics(a, a @ q)  # a rotation keeps every neighbour, not the directions
    cos = (a * (a @ q)).sum(1) / np.linalg.norm(a, axis=1) ** 2
    assert rotated["nn_agreement"] == 1.0 and rotated["mean_cosine"] == pytest.approx(cos.mean())
    u = a / np.linalg.norm(a, axis=1, keepdims=True)
    noisy = a + rng.standard_normal(a.shape)
    v = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    brute = np.mean([max((j for j in range(30) if j != i), key=lambda j: u[i] @ u[j]) ==
                     max((j for j in range(30) if j != i), key=lambda j: v[i] @ v[j]) for i in range(30)])
    assert embedding_metrics(a, noisy)["nn_agreement"] == pytest.approx(brute)

    tm, model = _load(transformers, "minilm_s16", "ts17")
    data = tmp_path / "d.npz"
    np.savez(data, **tz.feeds(tm, 20, 3))
    pruned = tmp_path / "p.onnx"
    res = CliRunner().invoke(main, ["prune", str(tm.path), "-o", str(pruned), "--method", "magnitude",
                                    "--keep-ratio", "0.5"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    got = compare(tm.path, pruned, data)
    assert got["metric"] == "cosine" and 0 < got["mean_cosine"] < 1 and "Div" in got["metric_reason"]
    want = embedding_metrics(run(model, dict(np.load(data)))[0], run(load_model(pruned), dict(np.load(data)))[0])
    assert got["mean_cosine"] == pytest.approx(want["mean_cosine"]) and got["nn_agreement"] == want["nn_agreement"]
    res = CliRunner().invoke(main, ["eval", str(tm.path), str(pruned), "--data", str(data)], catch_exceptions=False)
    assert res.exit_code == 0 and "nearest-neighbour agreement" in res.output, res.output
    res = CliRunner().invoke(main, ["eval", str(tm.path), str(pruned), "--data", str(data), "--metric",
                                    "classification", "--json"], catch_exceptions=False)
    assert res.exit_code == 0 and '"agreement"' in res.output, res.output


def test_full_refit_of_a_matmul_refits_the_bias_of_its_add(tmp_path):
    """x -> MatMul + Add (bias) -> Relu -> MatMul + Add -> y, exported-Linear style. Hidden unit 5 is a
    constant (2 · 5 = 10, from its bias) with the smallest output weights, so magnitude removes it: the
    MatMul's re-fit can only make up for it through the second Add's bias, which it now re-fits."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((4, 6)), rng.standard_normal(6)
    w1[:, 5], b1[5] = 0.0, 10.0
    w2, b2 = rng.standard_normal((6, 3)), rng.standard_normal(3)
    w2[5] = 0.02 * np.sign(w2[5])
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
             (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             helper.make_node("Relu", ["a1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["b2", "m2"], ["y"], name="fc2_bias")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": rng.standard_normal((200, 4)).astype(np.float32)}
    a = Analysis(model)
    (g,) = a.prunable
    for refit, close in (("full", True), ("none", False)):
        pruned, report = prune(model, feeds, method="magnitude", refit=refit, keep_ratio=1.0, keep={g.id: 5},
                               attention="heads")
        assert report.groups[g.id].kept == [0, 1, 2, 3, 4]
        err = rel_err(run(pruned, feeds), run(model, feeds))
        assert (err <= 1e-4) if close else (err > 1e-2), (refit, err)


@pytest.mark.parametrize("exp", ["ts17", "dynamo18"])
def test_round_to_auto_measures_the_heads(transformers, exp):
    """The default --round-to auto times each group's cut of the graph: a cut of heads must carry the
    TorchScript Reshape targets `Concat(B, S, H, D)` it rewrites, else ONNX Runtime refuses the narrower cut
    and the heads keep their full width ('not_measured')."""
    tm, model = _load(transformers, "minilm_s16", exp)
    _, report = prune(model, tz.feeds(tm, 40, 2), keep_ratio=0.5, attention="heads")
    assert report.latency["kind"] == "round_to" and report.latency["not_measured"] == {}
    heads = [g for g in report.groups if g.kind == "heads"]
    assert heads and all(g.kept_count == g.channels // 2 for g in heads)
