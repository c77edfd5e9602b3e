"""Greedy selection and re-fits on a group's statistics (issue 4 oracles)."""
import numpy as np
import pytest

from onnxprune.selection.greedy import gfs, greedy_convex, greedy_local, ls_gamma, prefix_losses
from onnxprune.statistics.moments import loss


def problem(seed, C=12, N=400, planted=None, noise=0.0):
    """Contributions Z (C × N) and a target; with `planted`, Y is a combination of those channels only."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((C, N)) * rng.uniform(0.2, 3.0, (C, 1))
    if planted is None:
        Y = Z.sum(0) + noise * rng.standard_normal(N)
    else:
        Y = (rng.uniform(0.5, 2.0, len(planted)) * rng.choice([-1, 1], len(planted))) @ Z[planted]
    return Z, Y, Z @ Z.T, Z @ Y, float(Y @ Y)


@pytest.mark.parametrize("seed", range(5))
def test_greedy_finds_planted_subset_first_and_reaches_zero(seed):
    planted = sorted(np.random.default_rng(100 + seed).choice(12, 4, replace=False).tolist())
    _, _, G, c, rr = problem(seed, planted=planted)
    path = greedy_local(G, c, rr, 8)
    assert sorted(path.order[:4]) == planted
    assert path.losses[4] <= 1e-9 * rr


@pytest.mark.parametrize("seed", range(5))
def test_path_losses_match_least_squares_and_never_increase(seed):
    Z, Y, G, c, rr = problem(seed, noise=3.0)
    path = greedy_local(G, c, rr, 12)
    assert np.all(np.diff(path.losses) <= 1e-9 * rr)
    for n in (1, 3, 7, 12):
        idx = path.order[:n]
        gamma = ls_gamma(G, c, idx)
        ref = np.linalg.lstsq(Z[idx].T, Y, rcond=None)[0]
        np.testing.assert_allclose(gamma, ref, rtol=1e-7, atol=1e-9)
        assert loss(G, c, rr, idx, gamma) == pytest.approx(path.losses[n], rel=1e-7, abs=1e-9 * rr)
        assert loss(G, c, rr, idx, gamma) == pytest.approx(float(((Y - ref @ Z[idx]) ** 2).sum()), rel=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_convex_steps_in_unit_interval_and_never_worse_than_fixed_step(seed):
    """Each line-search step lies in [0, 1] and, from the same iterate, loses no more than the
    fixed GFS step 1/t would for the same pick."""
    _, _, G, c, rr = problem(seed, noise=1.0)
    C = len(c)
    path = greedy_convex(G, c, rr, 6)
    assert all(0.0 <= e <= 1.0 for e in path.steps)
    gamma = np.zeros(C)
    for t, (k, eta) in enumerate(zip(path.picks, path.steps), start=1):
        move = np.zeros(C)
        move[k] = C
        best = (1 - eta) * gamma + eta * move
        fixed = (1 - 1 / t) * gamma + move / t
        assert loss(G, c, rr, np.arange(C), best) <= loss(G, c, rr, np.arange(C), fixed) + 1e-9 * rr
        gamma = best


def test_gfs_and_convex_keep_the_requested_count_and_quotas():
    _, _, G, c, rr = problem(0, C=16, noise=1.0)
    blocks = np.repeat(np.arange(4), 4)
    for fn in (greedy_local, greedy_convex, gfs):
        path = fn(G, c, rr, 8, blocks, np.full(4, 2))
        assert len(path.order) == 8
        assert np.all(np.bincount(blocks[path.order], minlength=4) == 2)


@pytest.mark.parametrize("seed", range(3))
def test_prefix_losses_are_least_squares_losses_of_every_prefix(seed):
    """The allocation's curve for a fixed channel order (e.g. magnitude's): the loss with least-squares γ
    on the first n channels, from one Cholesky factor."""
    Z, Y, G, c, rr = problem(seed, noise=0.5)
    order = list(np.random.default_rng(seed).permutation(len(c)))
    got = prefix_losses(G, c, rr, order)
    for n in range(len(order) + 1):
        idx = order[:n]
        gam = np.linalg.lstsq(Z[idx].T, Y, rcond=None)[0] if n else np.zeros(0)
        assert got[n] == pytest.approx(float(((Y - gam @ Z[idx]) ** 2).sum()), rel=1e-7, abs=1e-9 * rr)


def _omp_problem(seed, C=7, k=4, N=300, outside=3, out=5):
    """A consumer over C channels of k features each plus `outside` features that always stay."""
    rng = np.random.default_rng(seed)
    member = np.r_[np.repeat(np.arange(C), k), -np.ones(outside, int)]
    F = len(member)
    X = rng.standard_normal((N, F)) @ (np.eye(F) + 0.3 * rng.standard_normal((F, F)))
    Y = X @ rng.standard_normal((F, out)) + 0.5 + 0.3 * rng.standard_normal((N, out))
    return X, Y, member


def _residual(X, Y, cols):
    Xa = np.concatenate([X[:, cols], np.ones((len(X), 1))], 1)
    return float(((Y - Xa @ np.linalg.lstsq(Xa, Y, rcond=None)[0]) ** 2).sum())


@pytest.mark.parametrize("seed", range(3))
def test_group_omp_picks_the_channel_that_lowers_the_refit_residual_most(seed):
    """Every step of group OMP is the exhaustive best: among the channels not yet taken, the one whose block
    of features gives the lowest least-squares residual (with the outside features and the bias always in
    the fit); the path's losses are those residuals. Two consumers sum."""
    import torch

    from onnxprune.selection.greedy import group_omp
    from onnxprune.statistics.moments import Stats, conditioned
    problems = [_omp_problem(seed), _omp_problem(seed + 10)]
    terms = []
    for X, Y, member in problems:
        st = Stats(X.shape[1], Y.shape[1])
        st.add(torch.from_numpy(X), torch.from_numpy(Y))
        terms.append(conditioned(st, member[:X.shape[1]], np.ones(X.shape[1], bool), ridge=0.0))
    C = 7
    path = group_omp(terms, C, C)
    chosen = []
    for step in range(C):
        def total(chs):
            return sum(_residual(X, Y, np.flatnonzero((m < 0) | np.isin(m, chs))) for X, Y, m in problems)
        best = min((j for j in range(C) if j not in chosen), key=lambda j: total(chosen + [j]))
        assert path.order[step] == best, step
        chosen.append(best)
        assert path.losses[step + 1] == pytest.approx(total(chosen), rel=1e-6)
    assert path.losses[0] == pytest.approx(sum(_residual(X, Y, np.flatnonzero(m < 0)) for X, Y, m in problems),
                                           rel=1e-8)


def test_group_omp_respects_block_quotas():
    import torch

    from onnxprune.selection.greedy import group_omp
    from onnxprune.statistics.moments import Stats, conditioned
    X, Y, member = _omp_problem(5, C=8)
    st = Stats(X.shape[1], Y.shape[1])
    st.add(torch.from_numpy(X), torch.from_numpy(Y))
    blocks = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    path = group_omp([conditioned(st, member, np.ones(X.shape[1], bool))], 8, 4, blocks, [2, 2])
    assert sorted(np.bincount(blocks[path.order], minlength=2)) == [2, 2]


@pytest.mark.parametrize("seed,quota", [(0, None), (2, None), (2, (15, 15))])
def test_rank_deficient_statistics_no_overflow_and_losses_stay_least_squares(seed, quota):
    """Fewer calibration rows than channels (G of rank 20 for 200 channels): once the rank is used
    up, channels are added without gain and the factor is left as it was. Before, the ~0 pivots
    blew the factor up (overflow, NaN), which could also spoil picks still to come in other blocks."""
    rng = np.random.default_rng(seed)
    Z = (rng.standard_normal((20, 200)) * rng.uniform(0, 3, 200)).T  # 200 channels x 20 rows
    Y = rng.standard_normal(20)
    G, c, rr = Z @ Z.T, Z @ Y, float(Y @ Y)
    blocks = None if quota is None else np.repeat([0, 1], 100)
    n = 200 if quota is None else sum(quota)
    with np.errstate(all="raise"):
        path = greedy_local(G, c, rr, n, blocks, None if quota is None else np.array(quota))
    assert len(path.order) == n == len(set(path.order)) and np.isfinite(path.losses).all()
    assert np.all(np.diff(path.losses) <= 1e-9 * rr)
    for m in range(1, n + 1, 3):
        idx = path.order[:m]
        ref = np.linalg.lstsq(Z[idx].T, Y, rcond=None)[0]
        assert path.losses[m] == pytest.approx(float(((Y - ref @ Z[idx]) ** 2).sum()), rel=1e-6, abs=1e-8 * rr)
