"""End to end with calibration data: every zoo model, greedy and baseline methods with re-fits.
The pruned graph must equal its masked reference (re-fitted weights and γ included), and targets
must be met."""
import numpy as np
import pytest
import zoo
from helpers import rel_err, run

from onnxprune import load_model, masked_reference, prune
from onnxprune.analysis import Analysis
from onnxprune.analysis.cost import macs
from onnxprune.calibration import load_calibration
from onnxprune.selection import counts_for_target, fit_to_target, select

CONFIGS = [("greedy-local", "gamma", "loss"), ("greedy-convex", "full", "uniform"), ("gfs", "none", "uniform"),
           ("magnitude", "full", "loss"), ("greedy-omp", "full", "loss")]
NAMES = [n for n, _ in zoo.zoo_models()]


@pytest.fixture(scope="module")
def by_key(zoo_models):
    return {(z.name, z.exporter): z for z in zoo_models}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("exporter", ["ts17", "dynamo18"])
def test_calibrated_prune_equals_masked_reference(by_key, name, exporter):
    z = by_key[(name, exporter)]
    cal = zoo.random_input(z, 40, 11)
    for i, (method, refit, allocate) in enumerate(CONFIGS):
        pruned, report = prune(str(z.path), cal, method=method, refit=refit, allocate=allocate, flops=0.5,
                               batch_size=16, seed=i)
        feeds = zoo.random_input(z, 3, 7)
        assert rel_err(run(pruned, feeds), run(masked_reference(report), feeds)) <= 1e-4, (method, refit)
        assert abs(report.macs_ratio - 0.5) <= 0.02 + 1e-9, (method, report.macs_ratio)
        errs = [g.err_calib for g in report.groups if not g.frozen]
        assert all(e is not None and e >= 0 for e in errs)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_flops_target_met_on_every_zoo_model(zoo_models, fraction):
    """Within 2% of the original MACs (tiny zoo layers move MACs in coarse steps: a 4-channel
    group is 25% of its layer), for uniform and random selections alike."""
    for z in zoo_models:
        a = Analysis(load_model(z.path))
        counts = counts_for_target(a, fraction)
        for method in ("magnitude", "random"):
            sel = select(a, counts, method, seed=1)
            fit_to_target(a, sel, sel.scores, fraction)
            keep, _ = sel.class_arrays(a)
            assert abs(macs(a, keep) / macs(a) - fraction) <= 0.02, (z.name, z.exporter, method)


def test_calibration_sources_agree(by_key, tmp_path):
    """npz file, folder of npy, dict, iterable and CalibrationDataReader give the same pruned model."""
    z = by_key[("basic_res", "ts17")]
    x = zoo.random_input(z, 24, 3)["input"]
    np.savez(tmp_path / "c.npz", input=x)
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "a.npy", x)

    class Reader:
        def __init__(self):
            self.items = iter([{"input": x[i:i + 5]} for i in range(0, 24, 5)])

        def get_next(self):
            return next(self.items, None)

    sources = [tmp_path / "c.npz", tmp_path / "dir", {"input": x}, ({"input": x[i:i + 7]} for i in range(0, 24, 7)),
               Reader()]
    models = [prune(str(z.path), s, flops=0.5, batch_size=8)[0] for s in sources]
    feeds = zoo.random_input(z, 2, 0)
    ref = run(models[0], feeds)
    for m in models[1:]:
        assert rel_err(run(m, feeds), ref) <= 1e-6
    assert load_calibration(tmp_path / "c.npz", load_model(z.path)).size == 24
