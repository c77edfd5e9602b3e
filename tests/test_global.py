"""Global imitation (issue 5): Taylor scores against finite differences, and the combined choice."""
import json

import numpy as np
import onnx
import pytest
import torch
import zoo

from onnxprune import prune
from onnxprune.analysis import Analysis
from onnxprune.calibration import load_calibration
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
    """Per group, combined keeps whichever selection has the lower held-out output loss."""
    z = next(z for z in zoo_models if z.name == name and z.exporter == "ts17")
    cal = {"input": zoo.random_input(z, 48, 2)["input"]}
    _, report = prune(str(z.path), cal, method="greedy-combined", refit="gamma", flops=0.5, batch_size=16,
                      global_samples=32)
    decided = [g for g in report.groups if not g.frozen and g.note]
    assert decided
    for g in decided:
        losses = {}
        for part in g.note.split("; "):
            method, found, value = part.partition(": held-out output loss ")
            if found:
                losses[method] = float(value)
        assert set(losses) == {"greedy-local", "greedy-taylor"}
        winner = g.method.split(":", 1)[1]
        assert losses[winner] == min(losses.values())
    json.loads(report.to_json())
