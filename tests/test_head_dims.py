"""Dims within heads as groups (`--attention dims`, docs/DESIGN.md, "Dims within heads"): small random BERT
encoders and a ViT-style encoder from both exporters (tests/transformer_zoo.py).

Oracles: the pruned graph equals the masked reference (Q·Kᵀ's left operand multiplied by the gates) for random
selections and γ at batch 1 and 3, its MACs are the closed-form count, keep-all is the identity, and the torch
twin's gates give the masked reference; the Q·K re-basing is an exact change of the model and orders the dims
by the singular values of each head's whitened score form, so a planted encoder whose heads' score forms have
rank 2 keeps its output exactly with 2 Q·K dims per head, which the raw dims cannot; its moments leave the
padding tokens out; the command line refuses the option without data."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import transformer_zoo as tz
from click.testing import CliRunner
from helpers import oracle_error, rel_err, run

from onnxprune import load_model, prune
from onnxprune.analysis import Analysis
from onnxprune.analysis.cost import macs, model_macs
from onnxprune.calibration import load_calibration
from onnxprune.cli import main as cli
from onnxprune.pipeline.head_basis import head_bases, input_moments, pairs, rebase
from onnxprune.rewrite import Rewriter
from onnxprune.selection import Selection, counts_for_ratio, select

CASES = [(name, exp) for name in ("minilm_s7", "minilm_s16", "vit") for exp in tz.EXPORTERS]


@pytest.fixture(scope="module")
def transformers():
    return {(m.name, m.exporter): m for m in tz.build(tz.default_cache_dir())}


def _dims(transformers, name, exp):
    tm = transformers[(name, exp)]
    model = load_model(tm.path)
    return tm, model, Analysis(model, attention="dims")


@pytest.mark.parametrize("name,exp", CASES)
def test_qk_dims_v_dims_and_mlp_widths_are_the_groups(transformers, name, exp):
    tm, _, a = _dims(transformers, name, exp)
    layers, hidden, heads, mlp = tz.architecture(tm)
    d = hidden // heads
    kinds = [(g.kind, g.channels, g.unit, len(g.producers), len(g.consumers)) for g in a.prunable]
    assert kinds == [("qk_dims", d, heads, 2, 1), ("v_dims", d, heads, 1, 1), ("channels", mlp, 1, 1, 1)] * layers
    products = {a.graph.nodes[node].name for node, _, _ in a.contractions}
    assert len(products) == layers and all(a.graph.nodes[node].op == "MatMul" for node, _, _ in a.contractions)
    assert {g.consumers[0] for g in a.prunable if g.kind == "qk_dims"} == products   # Q·Kᵀ is the one reader


def test_a_scale_read_from_the_head_size_freezes_the_qk_dims(transformers):
    """The TorchScript export of scaled_dot_product_attention scales Q and K by √(1/√D) with D read by Shape:
    fewer dims would change the scale, so the Q·K dims freeze and the reason names the Sqrt; V dims and MLP
    widths stay prunable."""
    _, _, a = _dims(transformers, "vit_sdpa", "ts17")
    assert [g.kind for g in a.prunable] == ["v_dims", "channels"] * 2
    frozen = [g for g in a.groups if g.frozen and g.kind == "qk_dims"]
    assert len(frozen) == 2 and all(any("Sqrt" in r for r in g.reasons) for g in frozen)
    # the dynamo form transposes K by a Reshape that merges the batch and head axes: its K dims (the side the
    # product still sees as a split) freeze as Q·K dims, saying so; V dims and MLP widths prune
    _, _, a = _dims(transformers, "vit_sdpa", "dynamo18")
    assert [g.kind for g in a.prunable] == ["v_dims", "channels"] * 2
    frozen = [g for g in a.groups if g.frozen and g.kind == "qk_dims"]
    assert len(frozen) == 2 and all(any("contracts channels of one operand only" in r for r in g.reasons)
                                    for g in frozen)


@pytest.mark.parametrize("name,exp", CASES)
def test_pruned_equals_masked_reference_macs_and_keep_all(transformers, name, exp):
    tm, model, a = _dims(transformers, name, exp)
    layers, h, heads, mlp = tz.architecture(tm)
    s = tm.seq
    patch = 0 if tm.text else 16 * h * 3 * 4 * 4 + h * 10   # the patch-embedding Conv and the head
    assert oracle_error(a, lambda batch, seed: tz.feeds(tm, batch, seed), seeds=(0, 1, 2), ratios=(0.3, 0.8)) <= 1e-4
    for seed, ratio in ((0, 0.3), (1, 0.5)):
        sel = select(a, counts_for_ratio(a, ratio), "random", seed=seed, random_gamma=True)
        keep, gamma = sel.class_arrays(a)
        pruned = Rewriter(a, keep, gamma).run()
        feeds = tz.feeds(tm, 3, seed)
        assert rel_err(run(pruned, feeds), run(model, feeds)) > 1e-3, "the selection changes the output"
        kept = [len(sel.kept[g.id]) for g in a.prunable]
        # per layer: Q, K (s·h·H·dq each), Q·Kᵀ (s·s·H·dq), V and the output projection (s·h·H·dv each),
        # P·V (s·s·H·dv), the MLP (2·s·h·m)
        want = patch + sum(2 * s * h * heads * dq + s * s * heads * dq + 2 * s * h * heads * dv + s * s * heads * dv
                           + 2 * s * h * m for dq, dv, m in zip(kept[0::3], kept[1::3], kept[2::3]))
        assert macs(a, keep) == want
        assert abs(model_macs(pruned) - want) <= 1e-6 * a.total_macs
    everything = Selection({g.id: np.arange(g.channels) for g in a.prunable},
                           {g.id: np.ones(g.channels) for g in a.prunable})
    keep, gamma = everything.class_arrays(a)
    feeds = tz.feeds(tm, 3, 0)
    assert rel_err(run(Rewriter(a, keep, gamma).run(), feeds), run(model, feeds)) <= 1e-5


@pytest.mark.parametrize("name,exp", [("minilm_s16", "ts17"), ("vit", "dynamo18")])
def test_twin_gates_are_the_masked_reference(transformers, name, exp):
    from onnxprune.twin import Twin
    tm, model, a = _dims(transformers, name, exp)
    twin = Twin(a)
    only_qk = Selection({g.id: np.arange(g.channels // 2) for g in a.prunable if g.kind == "qk_dims"},
                        {g.id: np.linspace(0.5, 1.5, g.channels // 2) for g in a.prunable if g.kind == "qk_dims"})
    mixed = select(a, counts_for_ratio(a, 0.5), "random", seed=4, random_gamma=True)
    feeds = tz.feeds(tm, 3, 4)
    for sel in (only_qk, mixed):
        keep, gamma = sel.class_arrays(a)
        with torch.no_grad():
            gated = twin(feeds, twin.gates_for(sel))[0].numpy()
        assert rel_err([gated], run(Rewriter(a, keep, gamma, masked=True).run(), feeds)) <= 1e-4
        assert rel_err([gated], run(model, feeds)) > 1e-3


def test_head_bases_keep_the_form_and_order_its_singular_values():
    rng = np.random.default_rng(0)
    c, d = 10, 4
    x = rng.standard_normal((500, c)) @ rng.standard_normal((c, c))
    x1 = np.concatenate([x, np.ones((500, 1))], axis=1)
    cq = ck = x1.T @ x1 / 500
    wq, wk = rng.standard_normal((c + 1, d)), rng.standard_normal((c + 1, d))
    a, b, s = head_bases(wq, wk, cq, ck)
    np.testing.assert_allclose(a @ b.T, np.eye(d), atol=1e-8)
    assert np.all(np.diff(s) <= 0) and s[-1] > 0
    # the first r re-based dims are the best rank-r approximation of the scores in the data's metric: its
    # error is the sum of the dropped s², and no other choice of r raw dims does better
    scores = x1 @ wq @ wk.T @ x1.T / 500
    for r in (1, 2, 3):
        approx = x1 @ (wq @ a)[:, :r] @ (wk @ b)[:, :r].T @ x1.T / 500
        err = np.sum((scores - approx) ** 2)
        raw = min(np.sum((scores - x1 @ wq[:, list(k)] @ wk[:, list(k)].T @ x1.T / 500) ** 2)
                  for k in __import__("itertools").combinations(range(d), r))
        assert err < raw


def _low_rank(tmp_path, exporter, rank=2):
    """A two-layer encoder whose every head's score form x_iᵀ W_Q,hᵀ W_K,h x_j has rank `rank`, hidden in all
    D = 8 raw dims by a random invertible mixing of each head's Q and K."""
    model = tz.minilm.MiniLM.random(layers=2, hidden=32, heads=4, mlp=32, vocab=tz.VOCAB, max_positions=16, seed=2)
    g = torch.Generator().manual_seed(3)
    d = 8
    with torch.no_grad():
        for layer in model.encoder.layer:
            att = layer.attention.self
            for h in range(4):
                rows = slice(h * d, (h + 1) * d)
                for lin in (att.query, att.key):
                    mix = torch.randn(d, d, generator=g)
                    mask = torch.zeros(d, 1)
                    mask[:rank] = 1.0
                    lin.weight[rows] = mix @ (lin.weight[rows] * mask)
                    lin.bias[rows] = mix @ (lin.bias[rows] * mask[:, 0])
    return tz.export_text(model, tmp_path, "low_rank", exporter)


@pytest.mark.parametrize("exp", tz.EXPORTERS)
def test_planted_low_rank_heads_keep_the_output_with_their_rank(tmp_path, exp):
    path = _low_rank(tmp_path, exp)
    feeds = tz.feeds(tz.TransformerModel("low_rank", exp, path, 12, True, None), 64, 0)
    a = Analysis(load_model(path), attention="dims")
    qk = [g.id for g in a.prunable if g.kind == "qk_dims"]
    assert len(qk) == 2
    pruned, report = prune(path, feeds, keep_ratio=1.0, keep={gid: 2 for gid in qk}, attention="dims")
    assert report.macs_after < report.macs_before
    for gid in qk:
        rg = report.groups[gid]
        assert rg.kept_count == 2 and rg.method == "leading-dims" and rg.err_calib <= 1e-6
    assert rel_err(run(pruned, feeds), run(load_model(path), feeds)) <= 1e-4
    # the raw (not re-based) dims cannot: any 2 of them change the output
    for kept in ([0, 1], [2, 5]):
        sel = Selection({gid: np.array(kept) for gid in qk}, {gid: np.ones(2) for gid in qk})
        keep, gamma = sel.class_arrays(a)
        assert rel_err(run(Rewriter(a, keep, gamma).run(), feeds), run(load_model(path), feeds)) > 1e-2


def test_rebase_is_exact_and_its_moments_leave_padding_out(transformers):
    tm, model, a = _dims(transformers, "minilm_s16", "ts17")
    feeds = tz.feeds(tm, 24, 1)
    cal = load_calibration(feeds, a.model, holdout=0.0)
    done = rebase(a, cal, 8, "attention_mask")
    rebased, scores, skipped = done.model, done.scores, done.skipped
    assert done.values == 2 and done.change <= 1e-5
    assert not skipped and sorted(scores) == [g.id for g in a.prunable if g.kind == "qk_dims"]
    x = tz.feeds(tm, 5, 9)
    assert rel_err(run(rebased, x), run(model, x)) <= 1e-5
    changed = [t.name for t, u in zip(rebased.graph.initializer, a.model.graph.initializer)
               if not np.array_equal(onnx.numpy_helper.to_array(t), onnx.numpy_helper.to_array(u))]
    assert len(changed) == 7 * 2, changed   # Q, K, V weights and biases and the output projection, both layers
    # the same sentences with more padding: the moments of the projections' inputs are the same
    short = {k: v[:, :7].copy() for k, v in feeds.items()}
    _, _, a7 = _dims(transformers, "minilm_s7", "ts17")
    padded = {k: np.concatenate([v, np.zeros((len(v), 9), v.dtype)], axis=1) for k, v in short.items()}
    names16 = list(dict.fromkeys(n for p in pairs(a)[0] for n in (p.q.input, p.k.input)))
    names7 = list(dict.fromkeys(n for p in pairs(a7)[0] for n in (p.q.input, p.k.input)))
    m16 = input_moments(a, load_calibration(padded, a.model, holdout=0.0), names16, 8, "attention_mask")
    m7_ = input_moments(a7, load_calibration(short, a7.model, holdout=0.0), names7, 8, "attention_mask")
    for n16, n7 in zip(names16, names7):
        np.testing.assert_allclose(m16[n16], m7_[n7], rtol=1e-4, atol=1e-6)
    with_padding = input_moments(a, load_calibration(padded, a.model, holdout=0.0), names16, 8, None)
    assert not np.allclose(with_padding[names16[0]], m16[names16[0]], rtol=1e-3), "padding would change them"


def test_command_line_refuses_dims_without_data_and_analyze_shows_them(transformers, tmp_path):
    tm = transformers[("minilm_s7", "ts17")]
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(cli, ["prune", str(tm.path), "-o", str(out), "--flops", "0.5", "--method", "magnitude",
                                 "--attention", "dims"])
    assert r.exit_code == 2 and "attention" in r.output and "calibration" in r.output and not out.exists()
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["analyze", str(tm.path), "--attention", "dims"])
    assert r.exit_code == 0 and "Q·K dims of 4 heads" in r.output and "V dims of 4 heads" in r.output
    r = CliRunner().invoke(cli, ["analyze", str(tm.path), "--attention", "rows"])
    assert r.exit_code == 2 and "--attention" in r.output


def test_models_without_attention_analyse_the_same_either_way(zoo_models):
    from onnxprune.analysis.analyzer import attention_analysis
    """`--attention dims` changes only splits ahead of attention products: channel shuffles, pixel shuffles
    and every other group of the coverage zoo are read as before."""
    for z in zoo_models:
        model = load_model(z.path)
        heads, dims = Analysis(model), Analysis(model, attention="dims")
        assert [(g.kind, g.channels, g.frozen, g.reasons) for g in heads.groups] == \
            [(g.kind, g.channels, g.frozen, g.reasons) for g in dims.groups], z.name
        assert not dims.contractions and not dims.head_dims
        assert attention_analysis(model) is None   # --attention auto has nothing to choose


def test_command_line_prunes_the_dims_and_the_output_loads_from_disk(transformers, tmp_path):
    import json

    from helpers import run_file
    tm = transformers[("minilm_s16", "ts17")]
    calib = tmp_path / "calib.npz"
    np.savez(calib, **tz.feeds(tm, 48, 2))
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    masked = tmp_path / "masked.onnx"
    r = CliRunner().invoke(cli, ["prune", str(tm.path), "-o", str(out), "--calib", str(calib), "--flops", "0.6",
                                 "--attention", "dims", "--round-to", "1", "--report", str(report), "-q",
                                 "--masked-reference", str(masked)])
    assert r.exit_code == 0, r.output
    record = json.loads(report.read_text())
    assert record["attention"] == "dims" and record["head_basis"]["qk_dims_groups"] == 2
    assert record["head_basis"]["v_dims_groups"] == 2 and record["head_basis"]["output_change"] <= 1e-5
    assert "2 Q·K dims and 2 V dims groups re-based" in r.output
    groups = record["groups"]
    qk = [g for g in groups if g["kind"] == "qk_dims"]
    assert len(qk) == 2 and all(g["method"] == "leading-dims" for g in qk)
    assert any(g["kept_count"] < g["channels"] for g in groups if g["kind"] in ("qk_dims", "v_dims"))
    feeds = tz.feeds(tm, 4, 7)
    got = run_file(out, feeds)[0]
    assert rel_err([got], run_file(masked, feeds)) <= 1e-4   # the masked reference (with Q·Kᵀ's input mask)
    want = run(load_model(tm.path), feeds)[0]
    cosine = np.sum(got * want, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    assert cosine.min() > 0.5


class _FusedBlock(torch.nn.Module):
    """One encoder block whose Q, K and V come from one Linear split in three (GPT-2's c_attn)."""

    def __init__(self, dim=32, heads=4, mlp=48):
        super().__init__()
        nn = torch.nn
        self.heads, self.d = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x):
        b, s, c = x.shape
        q, k, v = (t.reshape(b, s, self.heads, self.d).transpose(1, 2)
                   for t in self.qkv(self.n1(x)).split(c, dim=-1))
        att = (q @ k.transpose(-1, -2) / self.d ** 0.5).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, s, c))
        return x + self.fc2(torch.relu(self.fc1(self.n2(x))))


@pytest.mark.parametrize("dynamo", [False, True])
def test_a_fused_projection_split_in_three_keeps_the_heads_reading(tmp_path, dynamo):
    """Its q, k and v pieces are one group, which cannot be Q·K dims in part and V dims in part: with
    --attention dims it is read as heads, and prunes (and rewrites) as heads do."""
    torch.manual_seed(0)
    path = tmp_path / "fused.onnx"
    with torch.no_grad():
        torch.onnx.export(_FusedBlock().eval(), (torch.randn(2, 10, 32),), str(path), input_names=["x"],
                          output_names=["y"], dynamic_axes=None if dynamo else {"x": {0: "b"}}, dynamo=dynamo,
                          opset_version=18 if dynamo else 17)
    model = load_model(path)
    a = Analysis(model, attention="dims")
    assert [(g.kind, g.channels) for g in a.prunable] == [("heads", 4), ("channels", 48)]
    assert not a.contractions

    def feeds(batch, seed):
        return {"x": np.random.default_rng(seed).standard_normal((2, 10, 32)).astype(np.float32)}
    assert oracle_error(a, feeds) <= 1e-4
    pruned, report = prune(path, {"x": feeds(64, 5)["x"].repeat(32, axis=0)}, flops=0.7, attention="dims",
                           round_to=1)
    assert report.groups[a.prunable[0].id].kept_count < 4 or report.groups[a.prunable[1].id].kept_count < 48


def test_heads_no_data_reaches_are_left_as_they_are():
    rng = np.random.default_rng(1)
    wq, wk = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    a, b, s = head_bases(wq, wk, np.zeros((7, 7)), np.eye(7))
    assert np.array_equal(a, np.eye(3)) and np.array_equal(b, np.eye(3)) and not s.any()


def test_qk_dims_that_cannot_be_re_based_keep_all_their_dims(transformers, monkeypatch, caplog):
    import logging

    from onnxprune.pipeline import head_basis
    tm = transformers[("minilm_s7", "ts17")]
    real = head_basis._side
    monkeypatch.setattr(head_basis, "_side", lambda a, lab: "not a plain projection" if len(lab) == 8 else
                        real(a, lab))
    with caplog.at_level(logging.WARNING, logger="onnxprune"):
        _, report = prune(tm.path, tz.feeds(tm, 48, 3), flops=0.7, attention="dims", round_to=1)
    qk = [g for g in report.groups if g.kind == "qk_dims"]
    assert len(qk) == 2 and all(g.kept_count == g.channels for g in qk)
    assert sorted(report.head_basis["kept_whole"]) == sorted(str(g.id) for g in qk)
    assert report.head_basis["qk_dims_groups"] == 0 and report.head_basis["v_dims_groups"] == 0
    assert sum("keeps all its dims: not a plain projection" in r.getMessage() for r in caplog.records) == 2
    assert report.macs_ratio == pytest.approx(0.7, abs=0.02)


def test_auto_reads_dims_where_they_prune_and_heads_elsewhere(transformers):
    """The default, --attention auto: with data, dims wherever a block's dims prune (MiniLM, the dynamo form of
    scaled_dot_product_attention, whose heads freeze), heads where its Q·K dims would freeze (the TorchScript
    form, scaled by a head size read at run time); without data, heads."""
    from onnxprune.analysis.analyzer import attention_analysis
    kinds = {}
    for name, exp in (("minilm_s7", "ts17"), ("vit_sdpa", "ts17"), ("vit_sdpa", "dynamo18")):
        tm = transformers[(name, exp)]
        _, report = prune(tm.path, tz.feeds(tm, 32, 1), keep_ratio=0.75, round_to=1)
        kinds[name, exp] = (report.attention, sorted({g.kind for g in report.groups if not g.frozen}))
        if name == "minilm_s7":
            _, no_data = prune(tm.path, None, method="magnitude", refit="none", keep_ratio=0.75)
            assert no_data.attention == "heads" and {g.kind for g in no_data.groups} == {"heads", "channels"}
    assert kinds == {("minilm_s7", "ts17"): ("dims", ["channels", "qk_dims", "v_dims"]),
                     ("vit_sdpa", "ts17"): ("heads", ["channels", "heads"]),
                     ("vit_sdpa", "dynamo18"): ("dims", ["channels", "v_dims"])}
    vit = attention_analysis(load_model(transformers[("vit", "ts17")].path))
    assert vit is not None and vit.attention == "dims" and vit.heads_at == frozenset()
    sdpa = attention_analysis(load_model(tz.build(tz.default_cache_dir(), ["vit_sdpa"], ["ts17"])[0].path))
    assert sdpa is not None and sdpa.attention == "dims" and sdpa.heads_at == \
        frozenset(f"/blocks/blocks.{b}/Reshape{s}" for b in (0, 1) for s in ("", "_1", "_2"))


def test_a_re_basing_that_changes_the_outputs_is_refused_or_auto_reads_heads(transformers, monkeypatch, tmp_path):
    """Re-basing must be exact: where ONNX Runtime sees the outputs move (forced here by a zero tolerance),
    --attention dims is refused with one line and auto prunes heads, saying why in the log, report and
    summary."""
    from onnxprune.pipeline import head_basis
    monkeypatch.setattr(head_basis, "EXACT_TOLERANCE", -1.0)
    tm = transformers[("minilm_s7", "ts17")]
    feeds = tz.feeds(tm, 32, 1)
    _, report = prune(tm.path, feeds, keep_ratio=0.75, round_to=1)
    assert report.attention == "heads" and "changed the model's outputs" in report.head_basis["failed"]
    assert {g.kind for g in report.groups} == {"heads", "channels"}
    assert "whole heads pruned: re-basing the dims within heads changed" in report.summary()
    calib, out = tmp_path / "c.npz", tmp_path / "o.onnx"
    np.savez(calib, **feeds)
    r = CliRunner().invoke(cli, ["prune", str(tm.path), "-o", str(out), "--calib", str(calib), "--keep-ratio", "0.75",
                                 "--attention", "dims", "-q"])
    assert r.exit_code == 2 and "--attention heads" in r.output and not out.exists()
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
