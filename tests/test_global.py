"""Global imitation (issue 5): Taylor scores against finite differences, and the combined choice."""
import json

import numpy as np
import onnx
import pytest
import torch
import zoo
from helpers import run

from onnxprune import apply_selection, prune
from onnxprune.analysis import Analysis
from onnxprune.calibration import load_calibration
from onnxprune.pipeline.pruner import visiting_order
from onnxprune.selection import Selection
from onnxprune.selection.global_imitation import OutputLoss
from onnxprune.twin import Twin


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_taylor_gradient_equals_finite_differences(zoo_models, kind):
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    a = Analysis(onnx.load(z.path))
    twin = Twin(a, dtype=torch.float64)
    cal = load_calibration({"input": zoo.random_input(z, 12, 0)["input"]}, a.model, holdout=0.0)
    loss = OutputLoss(cal, kind, 12, 6, "cpu", "calib")
    loss.set_reference(twin)
    rng = np.random.default_rng(0)
    gates = torch.from_numpy(rng.uniform(0.0, 1.5, len(a.class_of)))  # away from the original (zero gradient)
    value, grad = loss.gradient(twin, gates)
    assert value == pytest.approx(loss.value(twin, gates), rel=1e-9)
    g = a.prunable[0]
    for cls in g.classes[:4].tolist():
        eps = 1e-5
        up, down = gates.clone(), gates.clone()
        up[cls] += eps
        down[cls] -= eps
        fd = (loss.value(twin, up) - loss.value(twin, down)) / (2 * eps)
        assert grad[cls] == pytest.approx(fd, rel=1e-5, abs=1e-9 * max(1.0, abs(value)))


@pytest.mark.parametrize("name", ["basic_res", "mbv3_se", "concat"])
def test_combined_keeps_the_better_of_local_and_global(zoo_models, name, tmp_path):
    """Per group, combined keeps whichever selection has the lower held-out output loss. Each candidate's loss
    is recomputed here in ONNX Runtime, on the masked reference of the decisions made before that group plus
    the candidate, against the original's outputs on the held-out samples."""
    z = next(z for z in zoo_models if z.name == name and z.exporter == "ts17")
    x = zoo.random_input(z, 48, 2)["input"]
    _, report = prune(str(z.path), {"input": x}, method="greedy-combined", refit="gamma", flops=0.5, batch_size=16,
                      global_samples=32)
    a = report.analysis
    held = x[-5:]  # holdout 0.1 of 48 samples: the last 5
    ref = run(a.model, {"input": held})[0]
    decided = {g.id: g for g in report.groups if not g.frozen}
    before: dict[int, tuple] = {}
    checked = 0
    for group in visiting_order(a):
        g = decided[group.id]
        if g.candidates:
            assert [c["method"] for c in g.candidates] in (["greedy-local", "greedy-taylor"],
                                                           ["greedy-taylor", "greedy-local"])
            losses = []
            for cand in g.candidates:
                sel = Selection({k: np.array(v[0]) for k, v in before.items()},
                                {k: np.array(v[1]) for k, v in before.items()})
                sel.kept[g.id], sel.gamma[g.id] = np.array(cand["kept"]), np.array(cand["gamma"])
                out = run(apply_selection(a, sel, masked=True), {"input": held})[0]
                losses.append(_kl(ref, out))
                assert losses[-1] == pytest.approx(cand["held_out_output_loss"], rel=1e-3, abs=1e-7)
            assert losses[0] <= min(losses) + 1e-7
            assert g.method == f"combined:{g.candidates[0]['method']}" and g.kept == g.candidates[0]["kept"]
            checked += 1
        before[g.id] = (g.kept, g.gamma)
    assert checked
    json.loads(report.to_json())


def _kl(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean over samples of KL(softmax ref ‖ softmax out), in float64."""
    lr = torch.log_softmax(torch.from_numpy(ref).double(), 1)
    lo = torch.log_softmax(torch.from_numpy(out).double(), 1)
    return float((lr.exp() * (lr - lo)).sum(1).mean())
