"""The full re-fit of a consumer with fewer calibration rows than inputs (docs/DESIGN.md, "Re-fit levels"): a
pooled classifier sees one row per sample, so with few samples its ridge pulls towards its weights with one
least-squares scale per kept input, and without a held-out split to choose the strength it keeps those
scaled weights; with enough rows it is re-fitted whole towards its weights."""
import numpy as np
import patterns as P
import pytest
from helpers import load_in_ort
from onnx import helper, numpy_helper

from onnxprune import prune, save_model


def pooled_classifier(seed=0):
    """x [N, 3, 8, 8] -> Conv (48) -> Relu -> GlobalAveragePool -> Flatten -> Gemm (10): the head reads 48
    inputs, one row per sample."""
    rng = np.random.default_rng(seed)
    node, inits = P.conv("c", "x", "c_w", "c", rng, 3, 48)
    hn, hw = P.head("cr", 48, rng)
    return P.model([node, helper.make_node("Relu", ["c"], ["cr"], name="relu")] + hn, {**inits, **hw})


def _gemm(model):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "Gemm")
    return inits[node.input[1]], inits[node.input[2]]


@pytest.mark.parametrize("samples", [30, 400])
def test_a_classifier_with_fewer_rows_than_inputs_keeps_its_directions(tmp_path, samples):
    """Without a held-out split (holdout 0): 30 rows give the scale fit itself, 400 the whole re-fit."""
    model = pooled_classifier()
    rng = np.random.default_rng(1)
    data = {"x": rng.standard_normal((samples, 3, 8, 8)).astype(np.float32)}
    pruned, rep = prune(model, data, keep_ratio=0.5, refit="full", allocate="uniform", holdout=0.0)
    group = next(g for g in rep.groups if any("h_fc" in c for c in g.consumers))
    w0, _ = _gemm(model)
    w, _ = _gemm(pruned)
    cols = w0[:, group.kept]
    # the ratio of every pruned column to its original column: one number per column under the scale re-fit
    ratio = w / cols
    spread = float(np.abs(ratio - np.median(ratio, 0)).max())
    if samples == 30:  # 30 calibration rows for 48 inputs
        assert "one scale per kept input" in group.note and "h_fc: inf" in group.note, group.note
        assert spread < 1e-4
        assert np.abs(np.median(ratio, 0) - 1).max() > 1e-3   # the scales moved
    else:
        assert "scale" not in group.note and "ridge" in group.note, group.note
        assert spread > 1e-2
    path = tmp_path / "pruned.onnx"
    save_model(pruned, path)
    out = load_in_ort(path).run(None, data)[0]
    assert out.shape == (samples, 10) and np.isfinite(out).all()


def test_with_a_held_out_split_the_strength_towards_the_scaled_weights_is_chosen_there(tmp_path):
    model = pooled_classifier()
    rng = np.random.default_rng(2)
    data = {"x": rng.standard_normal((40, 3, 8, 8)).astype(np.float32)}   # 36 calibration rows, 4 held out
    pruned, rep = prune(model, data, keep_ratio=0.5, refit="full", allocate="uniform")
    group = next(g for g in rep.groups if any("h_fc" in c for c in g.consumers))
    assert "only 36 calibration rows for the 48 inputs" in group.note and "one scale per kept input" in group.note
    chosen = group.note.split("h_fc: ")[1].split(";")[0]
    assert float(chosen) in (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, float("inf")), group.note
    path = tmp_path / "pruned.onnx"
    save_model(pruned, path)
    assert np.isfinite(load_in_ort(path).run(None, data)[0]).all()
