"""Greedy selection and re-fits on a group's statistics (issue 4 oracles)."""
import numpy as np
import pytest

from onnxprune.greedy import gfs, greedy_convex, greedy_local, ls_gamma, prefix_losses
from onnxprune.statistics import loss


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
