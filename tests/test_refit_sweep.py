"""The re-fit sweep (docs/DESIGN.md, "Re-fit sweep"): after every group is decided, each group's consumers are
re-fitted once more on the network as finally pruned; kept only if the held-out output loss falls."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import load_in_ort
from onnx import numpy_helper
from test_residual_target import residual_block

import onnxprune.pipeline.held_out as held_out
from onnxprune import masked_reference, prune, save_model
from onnxprune.calibration.taps import Tap
from onnxprune.cli import main

# magnitude chooses the same channels with and without the sweep; without a held-out split the ridge is fixed
COMMON = dict(method="magnitude", refit="full", keep_ratio=0.5, allocate="uniform", max_positions=None,
              batch_size=8, bias_correction=False)


def _data(n, seed=2):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 6, 6)).astype(np.float32)}


def _head_error_and_optimum(pruned, original, feeds) -> tuple[float, float]:
    """The classifier's squared error against the original's outputs, and the least-squares optimum of a Gemm
    on the classifier's inputs in the pruned network."""
    ref = Tap(original, ["y"])(feeds)["y"].astype(np.float64)
    t = Tap(pruned, ["h_flat", "y"])(feeds)
    f = np.concatenate([t["h_flat"], np.ones((len(ref), 1))], 1).astype(np.float64)
    best = float(((ref - f @ np.linalg.lstsq(f, ref, rcond=None)[0]) ** 2).sum())
    return float(((t["y"] - ref) ** 2).sum()), best


def test_a_consumer_fitted_before_its_inputs_changed_is_refitted_on_the_final_network():
    """The stream r + c is decided when Conv b reads it, before the group Conv c reads: the classifier is fitted
    on a stream that Conv c's re-fit then moves. The sweep fits it on the stream as pruned: its error is the
    least-squares optimum there; without the sweep it is well above."""
    m, feeds = residual_block(head=True), _data(60)
    on, rep = prune(m, feeds, holdout=0.0, **COMMON)
    off, rep_off = prune(m, feeds, holdout=0.0, refit_sweep=False, **COMMON)
    w = rep.refit_sweep
    assert w["groups"] == 3 and w["applied"] and "without a check" in w["why"] and rep_off.refit_sweep is None
    err_on, best_on = _head_error_and_optimum(on, m, feeds)
    err_off, best_off = _head_error_and_optimum(off, m, feeds)
    assert err_on == pytest.approx(best_on, rel=1e-2)
    assert err_off > 1.05 * best_off, (err_off, best_off)


def test_the_swept_model_is_its_masked_reference_and_loads_from_disk(tmp_path):
    m, feeds = residual_block(head=True), _data(200)
    pruned, rep = prune(m, feeds, **COMMON)
    w = rep.refit_sweep
    assert w["held_out_loss_before"] is not None and w["held_out_loss_after"] is not None
    assert w["applied"] == (w["held_out_loss_after"] < w["held_out_loss_before"])
    save_model(pruned, tmp_path / "pruned.onnx")
    save_model(masked_reference(rep), tmp_path / "masked.onnx")
    x = _data(4, seed=9)
    y = load_in_ort(tmp_path / "pruned.onnx").run(None, x)[0]
    ref = load_in_ort(tmp_path / "masked.onnx").run(None, x)[0]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_a_sweep_that_does_not_lower_the_held_out_loss_is_undone(monkeypatch):
    m, feeds = residual_block(head=True), _data(200)
    plain, _ = prune(m, feeds, refit_sweep=False, **COMMON)
    monkeypatch.setattr(held_out, "output_loss", lambda original, model, batches, kind: 1.0)
    pruned, rep = prune(m, feeds, **COMMON)
    w = rep.refit_sweep
    assert not w["applied"] and w["why"] == "the held-out output loss did not fall" and w["groups"] == 3
    inits = lambda model: {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}  # noqa: E731
    a, b = inits(plain), inits(pruned)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flag", ["--refit-sweep", "--no-refit-sweep"])
def test_the_command_line_switch_reaches_the_pass_and_the_report(tmp_path, flag):
    m = residual_block(head=True)
    save_model(m, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **_data(64))
    res = CliRunner().invoke(main, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "p.onnx"), "--calib",
                                    str(tmp_path / "calib.npz"), "--keep-ratio", "0.5", "--report",
                                    str(tmp_path / "r.json"), flag])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "r.json").read_text())["refit_sweep"]
    if flag == "--refit-sweep":
        assert record["groups"] == 3 and ("re-fit sweep " in res.output)
    else:
        assert record is None and "re-fit sweep" not in res.output
    load_in_ort(tmp_path / "p.onnx")
