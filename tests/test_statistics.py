"""Streamed consumer statistics: batch-size independence and agreement with explicit contributions."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import zoo

from onnxprune.analysis import Analysis
from onnxprune.calibration.taps import Tap
from onnxprune.statistics.consumer import consumers_of, original_dense
from onnxprune.statistics.moments import Stats, group_terms, ridge_refit, scale_refit


def _setup(zoo_models, name="chain"):
    z = next(z for z in zoo_models if z.name == name and z.exporter == "ts17")
    a = Analysis(onnx.load(z.path))
    return z, a


def _stats(a, consumers, x_all, batch, max_positions):
    tap = Tap(a.model, [c.input for c in consumers] + [c.output for c in consumers])
    stats = {c.node: None for c in consumers}
    for first in range(0, len(x_all), batch):
        out = tap({"input": x_all[first:first + batch]})
        for c in consumers:
            x, y = c.features(out[c.input], out[c.output], first, max_positions, seed=0)
            if stats[c.node] is None:
                stats[c.node] = Stats(x.shape[1], y.shape[1])
            stats[c.node].add(x, y)
    return stats


@pytest.mark.parametrize("max_positions", [None, 5])
def test_streamed_statistics_do_not_depend_on_batch_size(zoo_models, max_positions):
    z, a = _setup(zoo_models)
    x = zoo.random_input(z, 13, 0)["input"]
    for g in a.prunable:
        cons = consumers_of(a, g)
        ref = _stats(a, cons, x, 13, max_positions)
        for batch in (1, 4):
            got = _stats(a, cons, x, batch, max_positions)
            for c in cons:
                for u, v in zip(got[c.node].numpy(), ref[c.node].numpy()):
                    np.testing.assert_allclose(u, v, rtol=1e-10, atol=1e-8)


def test_gram_matrix_equals_explicit_channel_contributions(zoo_models):
    """G_kl = Σ ⟨Z_k, Z_l⟩ with Z_k = the consumer's output from input channel k alone."""
    z, a = _setup(zoo_models)
    x = zoo.random_input(z, 6, 1)["input"]
    checked = 0
    for g in a.prunable:
        cons = consumers_of(a, g)
        if any(c.op != "Conv" for c in cons):
            continue
        stats = _stats(a, cons, x, 6, None)
        G, cvec, rr = group_terms([(stats[c.node], original_dense(c, a), _member(a, g, c), np.ones(len(c.labels), bool))
                                   for c in cons], g.channels)
        tap = Tap(a.model, [c.input for c in cons] + [c.output for c in cons])
        out = tap({"input": x})
        Gx = np.zeros_like(G)
        cx = np.zeros_like(cvec)
        rx = 0.0
        for c in cons:
            node = a.graph.nodes[c.node]
            w = torch.from_numpy(np.asarray(node.inputs[1].values, np.float64))
            b = np.asarray(node.inputs[2].values, np.float64)
            inp = torch.from_numpy(out[c.input].astype(np.float64))
            p = c.conv["pads"]
            Zs = []
            for k in range(g.channels):
                mask = torch.zeros(inp.shape[1], dtype=torch.float64)
                mask[_member(a, g, c)[::int(np.prod(c.conv["kernel"]))] == k] = 1
                zk = F.conv2d(F.pad(inp * mask[None, :, None, None], (p[1], p[3], p[0], p[2])), w,
                              stride=c.conv["strides"], dilation=c.conv["dilations"])
                Zs.append(zk.numpy().ravel())
            Zs = np.array(Zs)
            target = (out[c.output].astype(np.float64) - b[None, :, None, None]).ravel()
            Gx += Zs @ Zs.T
            cx += Zs @ target
            rx += float(target @ target)
        np.testing.assert_allclose(G, Gx, rtol=1e-8, atol=1e-8 * np.abs(Gx).max())
        np.testing.assert_allclose(cvec, cx, rtol=1e-8, atol=1e-8 * np.abs(cx).max())
        assert rr == pytest.approx(rx, rel=1e-8)
        checked += 1
    assert checked >= 2


def _member(a, g, c):
    pos = {cl: i for i, cl in enumerate(g.classes.tolist())}
    return np.array([pos.get(cl, -1) for cl in a.class_of[c.labels].tolist()])


def test_ridge_refit_without_ridge_is_least_squares():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 9))
    Y = X @ rng.standard_normal((9, 4)) + 0.5 + 0.1 * rng.standard_normal((300, 4))
    st = Stats(9, 4)
    st.add(torch.from_numpy(X), torch.from_numpy(Y))
    keep = np.array([1, 1, 0, 1, 0, 1, 1, 1, 0], bool)
    w = ridge_refit(st, keep, 0.0)
    Xa = np.concatenate([X[:, keep], np.ones((300, 1))], 1)
    ref = np.linalg.lstsq(Xa, Y, rcond=None)[0]
    np.testing.assert_allclose(w[:, np.append(np.flatnonzero(keep), 9)], ref.T, rtol=1e-8, atol=1e-10)
    assert np.all(w[:, np.flatnonzero(~keep)] == 0)
    assert st.loss(w) == pytest.approx(float(((Y - Xa @ ref) ** 2).sum()), rel=1e-8)


def test_ridge_refit_pulls_towards_the_prior():
    """Ridge towards a prior W0 solves (A + λE) W = B + λE W0: checked against the explicit solve; a huge
    λ returns W0 on the kept inputs (the bias is still fitted), no prior means shrinking towards 0."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 6))
    Y = X @ rng.standard_normal((6, 3)) + 0.3 * rng.standard_normal((40, 3))
    st = Stats(6, 3)
    st.add(torch.from_numpy(X), torch.from_numpy(Y))
    keep = np.array([1, 0, 1, 1, 0, 1], bool)
    prior = rng.standard_normal((3, 7))
    lam_rel = 0.5
    w = ridge_refit(st, keep, lam_rel, prior=prior)
    k = np.flatnonzero(keep)
    Xa = np.concatenate([X[:, k], np.ones((40, 1))], 1)
    A = Xa.T @ Xa
    lam = lam_rel * np.diag(A)[:-1].mean()
    E = np.diag(np.r_[np.ones(len(k)), 0.0])
    W0 = np.concatenate([prior[:, k], np.zeros((3, 1))], 1).T
    ref = np.linalg.solve(A + lam * E, Xa.T @ Y + lam * E @ W0)
    np.testing.assert_allclose(w[:, np.append(k, 6)], ref.T, rtol=1e-7, atol=1e-9)
    stiff = ridge_refit(st, keep, 1e9, prior=prior)
    np.testing.assert_allclose(stiff[:, k], prior[:, k], rtol=1e-5, atol=1e-6)
    assert np.abs(ridge_refit(st, keep, 1e9)[:, k]).max() < 1e-5


def test_infinite_ridge_is_the_least_squares_bias_correction():
    """Planted Y = X W + b: with the kept weights fixed at W, the least-squares bias is b plus what the
    removed inputs gave on average (checked against an explicit fit of the bias alone); the infinite ridge
    is also the limit of large finite ones."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((500, 8)) + rng.uniform(-2, 2, 8)   # inputs with non-zero means
    W = rng.standard_normal((8, 3))
    b = rng.standard_normal(3)
    Y = X @ W + b
    st = Stats(8, 3)
    st.add(torch.from_numpy(X), torch.from_numpy(Y))
    keep = np.array([1, 0, 1, 1, 0, 1, 0, 1], bool)
    prior = np.concatenate([W.T, b[:, None]], 1)
    w = ridge_refit(st, keep, np.inf, prior=prior)
    np.testing.assert_array_equal(w[:, :8][:, keep], W.T[:, keep])
    assert np.all(w[:, :8][:, ~keep] == 0)
    resid = Y - X[:, keep] @ W[keep]
    explicit = np.linalg.lstsq(np.ones((500, 1)), resid, rcond=None)[0][0]
    np.testing.assert_allclose(w[:, 8], explicit, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(w[:, 8], b + X[:, ~keep].mean(0) @ W[~keep], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ridge_refit(st, keep, 1e9, prior=prior), w, rtol=1e-5, atol=1e-6)
    fixed = ridge_refit(st, keep, np.inf, fixed_bias=np.zeros(3), prior=prior)
    assert np.all(fixed[:, 8] == 0)


def test_scale_refit_is_least_squares_over_one_scale_per_input_and_the_bias():
    """Planted Y = X diag(g) W + b on fewer rows than a whole fit would need: the scales and the bias are
    recovered exactly, removed inputs stay 0; with noise the result equals an explicit least-squares fit
    over (g, b), and a fixed bias is kept as given."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((12, 30)) + rng.uniform(-1, 1, 30)   # 12 rows, 30 inputs, 20 outputs
    prior = np.concatenate([rng.standard_normal((20, 30)), rng.standard_normal((20, 1))], 1)
    keep = rng.random(30) < 0.3
    k = np.flatnonzero(keep)
    g, b = rng.uniform(0.5, 2.0, len(k)), rng.standard_normal(20)
    Y = (X[:, k] * g) @ prior[:, k].T + b
    st = Stats(30, 20)
    st.add(torch.from_numpy(X), torch.from_numpy(Y))
    w = scale_refit(st, keep, prior, ridge=0.0)
    np.testing.assert_allclose(w[:, k], prior[:, k] * g, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(w[:, 30], b, rtol=1e-7, atol=1e-8)
    assert np.all(w[:, :30][:, ~keep] == 0)
    Yn = Y + rng.standard_normal(Y.shape)
    st = Stats(30, 20)
    st.add(torch.from_numpy(X), torch.from_numpy(Yn))
    w = scale_refit(st, keep, prior, ridge=0.0)
    # explicit: vec(Y) regressed on the columns vec(x_j w_j^T) and one indicator per output's bias
    design = np.concatenate([np.stack([np.outer(X[:, j], prior[:, j]).ravel() for j in k], 1),
                             np.kron(np.ones((12, 1)), np.eye(20))], 1)
    sol = np.linalg.lstsq(design, Yn.ravel(), rcond=None)[0]
    np.testing.assert_allclose(w[:, k], prior[:, k] * sol[:len(k)], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(w[:, 30], sol[len(k):], rtol=1e-6, atol=1e-8)
    fixed = scale_refit(st, keep, prior, fixed_bias=b, ridge=0.0)
    assert np.all(fixed[:, 30] == b)
    design_f = design[:, :len(k)]
    sol_f = np.linalg.lstsq(design_f, (Yn - b).ravel(), rcond=None)[0]
    np.testing.assert_allclose(fixed[:, k], prior[:, k] * sol_f, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("k,s,d,p,mp", [(1, 1, 1, 0, 7), (3, 2, 1, 1, 10), (3, 1, 2, 2, None), (5, 2, 2, 2, 4),
                                        (3, 1, 1, 1, 10**6)])
def test_conv_features_are_unfold_patches_at_the_sampled_positions(k, s, d, p, mp):
    """Patches are cut at the sampled positions only: they must equal F.unfold's columns there."""
    from onnxprune.statistics import Consumer
    rng = np.random.default_rng(k * 100 + s * 10 + d + p)
    x = rng.standard_normal((3, 4, 11, 11)).astype(np.float32)
    hout = (11 + 2 * p - d * (k - 1) - 1) // s + 1
    y = rng.standard_normal((3, 5, hout, hout)).astype(np.float32)
    c = object.__new__(Consumer)
    c.op, c.name, c.node = "Conv", "c", 3
    c.conv = {"pads": [p] * 4, "kernel": [k, k], "strides": [s, s], "dilations": [d, d]}
    fx, fy = c.features(x, y, 5, mp, 0)
    cols = F.unfold(F.pad(torch.from_numpy(x).double(), (p,) * 4), (k, k), dilation=d, stride=s).transpose(1, 2)
    ys = torch.from_numpy(y).double().reshape(3, 5, -1).transpose(1, 2)
    n_pos = hout * hout
    take = min(n_pos, mp or n_pos)
    assert fx.shape == (3 * take, 4 * k * k) and fy.shape == (3 * take, 5) and fx.dtype == torch.float64
    for i in range(3):
        rows = slice(i * take, (i + 1) * take)
        # each feature row must be the unfold column at the position whose output row it comes with
        match = [int(np.flatnonzero((ys[i] == r).all(1))[0]) for r in fy[rows]]
        assert len(set(match)) == take
        torch.testing.assert_close(fx[rows], cols[i, match], rtol=0, atol=0)


def test_ridge_refit_of_a_grouped_conv_keeps_its_blocks():
    """A grouped Conv reads only its own group's inputs: the re-fit must be the least-squares fit of each
    output block on that block's kept features (a dense fit would mix groups, and those weights cannot
    be written back into the op)."""
    from onnxprune.statistics import Consumer
    rng = np.random.default_rng(3)
    group, cin_g, per, k = 3, 4, 2, 9                     # 12 input channels, 3x3 kernel, 6 outputs
    n_feat = group * cin_g * k
    c = Consumer(0, "g", "Conv", "x", "y", 1, np.repeat(np.arange(group * cin_g), k),
                 dict(kernel=(3, 3), pads=[1, 1, 1, 1], strides=(1, 1), dilations=(1, 1), group=group))
    # features correlated across groups, outputs reading other groups too: a dense fit uses them
    X = rng.standard_normal((500, n_feat)) @ (np.eye(n_feat) + 0.3 * rng.standard_normal((n_feat, n_feat)))
    Y = X @ rng.standard_normal((n_feat, group * per)) + 0.1 * rng.standard_normal((500, group * per))
    st = Stats(n_feat, group * per)
    st.add(torch.from_numpy(X), torch.from_numpy(Y))
    keep = np.repeat(rng.random(group * cin_g) < 0.6, k)
    w = ridge_refit(st, keep, 0.0, blocks=c.blocks(group * per))
    for q in range(group):
        rows = slice(q * per, (q + 1) * per)
        own = np.zeros(n_feat, bool)
        own[q * cin_g * k:(q + 1) * cin_g * k] = True
        assert np.all(w[rows, :-1][:, ~(own & keep)] == 0)
        Xa = np.concatenate([X[:, own & keep], np.ones((500, 1))], 1)
        ref = np.linalg.lstsq(Xa, Y[:, rows], rcond=None)[0]
        np.testing.assert_allclose(w[rows][:, np.append(np.flatnonzero(own & keep), n_feat)], ref.T,
                                   rtol=1e-7, atol=1e-9)
    assert c.blocks(6) is not None and Consumer(0, "d", "Conv", "x", "y", 1, c.labels, dict(group=1)).blocks(6) is None


def test_refit_curve_is_the_full_refit_loss_of_every_prefix():
    """The allocation's curve under --refit full: keeping the group's first n channels (in a given order)
    plus every feature outside the group, the loss of the least-squares re-fit of the whole consumer."""
    from onnxprune.statistics.moments import refit_curve
    rng = np.random.default_rng(4)
    k, channels, outside = 4, 6, 3                       # 6 group channels of 4 features, 3 other features
    member = np.r_[np.repeat(np.arange(channels), k), -np.ones(outside, int)]
    n_feat = len(member)
    X = rng.standard_normal((400, n_feat)) @ (np.eye(n_feat) + 0.2 * rng.standard_normal((n_feat, n_feat)))
    Y = X @ rng.standard_normal((n_feat, 5)) + 1.0 + 0.2 * rng.standard_normal((400, 5))
    st = Stats(n_feat, 5)
    st.add(torch.from_numpy(X), torch.from_numpy(Y))
    order = [3, 0, 5, 1, 4, 2]
    curve = refit_curve(st, member, order, ridge=0.0)
    for n in range(channels + 1):
        keep = (member < 0) | np.isin(member, order[:n])
        assert curve[n] == pytest.approx(st.loss(ridge_refit(st, keep, 0.0)), rel=1e-7, abs=1e-9 * st.yy)
    assert np.all(np.diff(curve) <= 1e-9 * st.yy)


def test_taps_use_cuda_with_heuristic_cudnn_search_when_present(monkeypatch):
    """With onnxruntime-gpu the taps run on the CUDA EP, without the default exhaustive cuDNN search
    (each tap session runs a few batches: the search cost twice the CPU EP's time on an H100)."""
    import onnxruntime as ort

    from onnxprune.calibration import taps
    monkeypatch.setattr(taps, "_PROVIDERS", None)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert taps.providers() == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}),
                                "CPUExecutionProvider"]
    monkeypatch.setattr(taps, "_PROVIDERS", None)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert taps.providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("name", ["mbv3_se", "concat"])
def test_output_cache_rows_are_the_original_outputs_at_the_sampled_positions(zoo_models, name, monkeypatch):
    """The cached rows of every consumer equal the rows `features` pairs with its inputs when the original is
    tapped directly, whatever the batch size; and a run with the cache decides exactly as one without."""
    from onnxprune import prune
    from onnxprune.calibration import load_calibration
    from onnxprune.pipeline.pruner import visiting_order
    from onnxprune.statistics import output_cache
    from onnxprune.statistics.output_cache import OutputCache
    z, a = _setup(zoo_models, name)
    x = zoo.random_input(z, 13, 4)["input"]
    cal = load_calibration({"input": x}, a.model, holdout=0.2)
    consumers = {c.node: c for g in visiting_order(a) for c in consumers_of(a, g)}
    cs = list(consumers.values())
    shapes = {t.name: t.shape for t in a.graph.tensors().values()}
    plan = OutputCache.plan(cs, shapes, 3, cal.size)
    assert plan is not None
    cache = OutputCache.build(cal, a.model, cs, shapes, plan, 4, 3, seed=0)
    tap = Tap(a.model, [c.input for c in cs] + [c.output for c in cs])
    for first in range(0, 13, 5):
        out = tap({"input": x[first:first + 5]})
        for c in cs:
            _, y = c.features(out[c.input], out[c.output], first, 3, seed=0)
            np.testing.assert_allclose(cache.rows(c.node, first, len(out[c.input])).numpy(), y.numpy(), rtol=1e-6,
                                       atol=1e-6)
    built = []
    real_build = OutputCache.build.__func__
    monkeypatch.setattr(OutputCache, "build",
                        classmethod(lambda cls, *a, **k: built.append(1) or real_build(cls, *a, **k)))
    _, with_cache = prune(str(z.path), {"input": x}, flops=0.5, max_positions=3, batch_size=4)
    assert built == [1]
    monkeypatch.setattr(output_cache, "CACHE_BUDGET", 0)
    _, without = prune(str(z.path), {"input": x}, flops=0.5, max_positions=3, batch_size=4)
    assert built == [1], "no cache when it does not fit"
    assert [g.kept for g in with_cache.groups] == [g.kept for g in without.groups]
    for g1, g2 in zip(with_cache.groups, without.groups):
        np.testing.assert_allclose(g1.gamma, g2.gamma, rtol=1e-6, atol=1e-8)
        if g1.err_calib is not None:
            assert g1.err_calib == pytest.approx(g2.err_calib, rel=1e-5, abs=1e-9)
