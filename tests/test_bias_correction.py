"""Bias correction after the full re-fit (docs/DESIGN.md, "Bias correction"): every Conv/Gemm bias, and every
Linear layer's (MatMul + bias Add, over the real tokens only), is shifted so that each kept channel's mean on the
calibration samples is the original's, kept only if the held-out output
loss falls; the shifts are part of the selection, so the masked reference has them too."""
import json

import numpy as np
import onnxruntime as ort
import patterns as P
import pytest
import transformer_zoo as tz
from click.testing import CliRunner
from helpers import load_in_ort
from onnx import helper, numpy_helper

import onnxprune.bias_correction as bc
import onnxprune.pipeline.held_out as held_out
from onnxprune import load_model, masked_reference, prune, save_model
from onnxprune.analysis import Analysis
from onnxprune.api import apply_selection
from onnxprune.calibration import load_calibration
from onnxprune.cli import main
from onnxprune.selection import counts_for_ratio, select


def chain(seed=0):
    """x -> Conv(16) -> Relu -> depthwise Conv -> Relu -> Conv(16) -> Relu -> pool -> Gemm(10)."""
    rng = np.random.default_rng(seed)
    n1, i1 = P.conv("c1", "x", "c1_w", "a1", rng, 3, 16)
    n2, i2 = P.conv("dw", "r1", "dw_w", "a2", rng, 16, 16, group=16)
    n3, i3 = P.conv("c3", "r2", "c3_w", "a3", rng, 16, 16)
    hn, hw = P.head("r3", 16, rng)
    relus = [helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}") for i in (1, 2, 3)]
    return P.model([n1, relus[0], n2, relus[1], n3, relus[2]] + hn, {**i1, **i2, **i3, **hw})


def data(n=256, seed=1):
    rng = np.random.default_rng(seed)
    return {"x": (rng.standard_normal((n, 3, 8, 8)) + 0.5).astype(np.float32)}


def _biased_outputs(model):
    return [n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm") and len(n.input) == 3]


def _channel_means(model, names, feeds):
    m = type(model)()
    m.CopyFrom(model)
    m.graph.output.extend([helper.make_tensor_value_info(n, 1, None) for n in names if n != "y"])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    return {n: got[n].mean(axis=(0,) + tuple(range(2, got[n].ndim))) for n in names}


def _unmatched(original, pruned, feeds, tol=1e-4):
    """Pruned tensors with a channel whose calibration mean is no original channel's mean there."""
    names = _biased_outputs(pruned)
    mo, mp = _channel_means(original, names, feeds), _channel_means(pruned, names, feeds)
    scale = {n: np.abs(mo[n]).max() + 1e-6 for n in names}
    return [n for n in names if np.abs(mp[n][:, None] - mo[n][None, :]).min(1).max() > tol * scale[n]]


def test_every_kept_channel_has_the_original_mean_on_the_calibration_samples(tmp_path):
    """The re-fit sees 2 positions per image (`max_positions`), so the means over all positions drift."""
    model, feeds = chain(), data()
    pruned, rep = prune(model, feeds, keep_ratio=0.5, allocate="uniform", holdout=0.0, max_positions=2)
    b = rep.bias_correction
    assert b["applied"] and b["layers"] == 4 and b["samples"] == 256 and "without a check" in b["why"]
    assert _unmatched(model, pruned, feeds) == []
    plain, _ = prune(model, feeds, keep_ratio=0.5, allocate="uniform", holdout=0.0, max_positions=2,
                     bias_correction=False)
    assert _unmatched(model, plain, feeds) == ["a3"]   # without it c3's means drift (its input has 16 channels)
    path = tmp_path / "pruned.onnx"
    save_model(pruned, path)
    y = load_in_ort(path).run(None, feeds)[0]
    ref = load_in_ort(_saved(masked_reference(rep), tmp_path / "masked.onnx")).run(None, feeds)[0]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()   # the masked reference has the shifts


def _saved(model, path):
    save_model(model, path)
    return path


def test_a_correction_that_does_not_lower_the_held_out_loss_is_dropped(monkeypatch):
    model, feeds = chain(), data(300)
    plain, _ = prune(model, feeds, keep_ratio=0.5, allocate="uniform", refit_sweep=False, bias_correction=False)
    monkeypatch.setattr(held_out, "output_loss", lambda original, m, batches, kind: 1.0)
    pruned, rep = prune(model, feeds, keep_ratio=0.5, allocate="uniform", refit_sweep=False)
    b = rep.bias_correction
    assert not b["applied"] and b["why"] == "the held-out output loss did not fall" and b["layers"] == 4
    inits = lambda m: {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}  # noqa: E731
    a, c = inits(plain), inits(pruned)
    assert a.keys() == c.keys() and all(np.array_equal(a[k], c[k]) for k in a)


def test_gemm_beta_divides_the_shift():
    rng = np.random.default_rng(3)
    n1, i1 = P.conv("c1", "x", "c1_w", "a1", rng, 3, 16)
    hn, hw = P.head("r1", 16, rng)
    hn[-1].attribute.append(helper.make_attribute("beta", 0.5))
    model = P.model([n1, helper.make_node("Relu", ["a1"], ["r1"], name="relu1")] + hn, {**i1, **hw})
    feeds = data(400)   # the head is fitted on all 400 rows; the means are those of the first 256
    pruned, rep = prune(model, feeds, keep_ratio=0.5, allocate="uniform", holdout=0.0)
    first = {"x": feeds["x"][:256]}
    assert rep.bias_correction["applied"] and _unmatched(model, pruned, first) == []
    plain, _ = prune(model, feeds, keep_ratio=0.5, allocate="uniform", holdout=0.0, bias_correction=False)
    assert _unmatched(model, plain, first) == ["y"]


@pytest.mark.parametrize("flag", ["--bias-correction", "--no-bias-correction"])
def test_cli_flag_and_report(tmp_path, flag):
    model_file, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    save_model(chain(), model_file)
    np.savez(calib, **data(300))
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    res = CliRunner().invoke(main, ["prune", str(model_file), "-o", str(out), "--calib", str(calib),
                                    "--keep-ratio", "0.5", "--report", str(rep), flag], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    record = json.loads(rep.read_text())["bias_correction"]
    if flag == "--no-bias-correction":
        assert record is None and "bias correction" not in res.output
    else:
        assert record["layers"] == 4 and record["held_out_loss_before"] > 0 and "bias correction" in res.output
    assert np.isfinite(load_in_ort(out).run(None, data(4))[0]).all()


# ----- Linear layers (MatMul + bias Add) of transformers: channels on the last axis, real tokens only ---------

@pytest.fixture(scope="module")
def encoders():
    return {(m.name, m.exporter): m for m in tz.build(tz.default_cache_dir())}


def _linear_outputs(model):
    """(output, where its means are matched) of each exported Linear layer (the bias Add of a MatMul with an
    initializer weight): the residual Add it feeds (the other operand computed), else its own output."""
    inits = {i.name for i in model.graph.initializer}
    matmuls = {n.output[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    linear = [n.output[0] for n in model.graph.node if n.op_type == "Add" and
              any(i in matmuls for i in n.input) and any(i in inits for i in n.input)]
    readers = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def matched(out):
        r = readers.get(out, [])
        if len(r) == 1 and r[0].op_type == "Add" and not any(i in inits for i in r[0].input):
            return r[0].output[0]
        return out
    return [(out, matched(out)) for out in linear]


def _token_means(model, names, feeds):
    """Per tensor [N, S, C], the mean of each channel over the real tokens (attention_mask 1)."""
    m = type(model)()
    m.CopyFrom(model)
    m.graph.output.extend([helper.make_tensor_value_info(n, 1, None) for n in names])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    real = feeds["attention_mask"] != 0
    return {n: got[n][real].mean(0) for n in names}


@pytest.mark.parametrize("exp", tz.EXPORTERS)
def test_linear_layers_keep_the_original_means_over_the_real_tokens(encoders, exp, tmp_path):
    """Every Linear layer's kept channels (Q, K, V and the first MLP layer; the residual sums after the output
    projection and the second MLP layer) have the original's mean over the real tokens of the calibration
    sentences; without the correction, the re-fit on 2 tokens per sentence leaves drifts."""
    tm = encoders[("minilm_s16", exp)]
    model, feeds = load_model(tm.path), tz.feeds(tm, 64, 3)
    pruned, rep = prune(model, feeds, keep_ratio=0.5, holdout=0.0, max_positions=2, attention="heads")
    b = rep.bias_correction
    layers = 6 * tz.architecture(tm)[0]
    assert b["applied"] and b["layers"] == layers and b["samples"] == 64
    linear = _linear_outputs(pruned)
    names = [m for _, m in linear]
    assert len(names) == layers and sum(out != m for out, m in linear) == 2 * tz.architecture(tm)[0]

    def unmatched(m):
        mo, mp = _token_means(model, names, feeds), _token_means(m, names, feeds)
        return [n for n in names if np.abs(mp[n][:, None] - mo[n][None, :]).min(1).max() >
                1e-4 * (np.abs(mo[n]).max() + 1e-6)]
    assert unmatched(pruned) == []
    plain, _ = prune(model, feeds, keep_ratio=0.5, holdout=0.0, max_positions=2, attention="heads",
                     bias_correction=False)
    assert len(unmatched(plain)) >= layers // 3
    path = _saved(pruned, tmp_path / "pruned.onnx")
    f = tz.feeds(tm, 3, 7)
    y = load_in_ort(path).run(None, f)[0]
    ref = load_in_ort(_saved(masked_reference(rep), tmp_path / "masked.onnx")).run(None, f)[0]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_padding_tokens_stay_out_of_the_means(encoders):
    """One selection, corrected on the same sentences with different token ids in the padding: the same biases
    when the means leave the padding out, different ones when they count it (the test can fail)."""
    tm = encoders[("minilm_s16", "ts17")]
    a = Analysis(load_model(tm.path))
    sel = select(a, counts_for_ratio(a, 0.5), "magnitude")
    feeds = tz.feeds(tm, 40, 4)
    other = dict(feeds, input_ids=np.where(feeds["attention_mask"] == 1, feeds["input_ids"],
                                           np.random.default_rng(1).integers(1, tz.VOCAB, feeds["input_ids"].shape)))

    def corrected(data, token_mask):
        cal = load_calibration(data, a.model, holdout=0.0)
        model, _, rec = bc.correct_biases(a, sel, apply_selection(a, sel), cal, "mse", 8, token_mask=token_mask)
        assert rec.applied and rec.layers == 6 * tz.architecture(tm)[0]
        return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def same(x, y):
        return x.keys() == y.keys() and all(np.allclose(x[k], y[k], rtol=1e-6, atol=1e-7) for k in x)
    assert same(corrected(feeds, "attention_mask"), corrected(other, "attention_mask"))
    assert not same(corrected(feeds, None), corrected(other, None))
