"""Label-free distillation (issue 13): it trains on fresh crops of the calibration images only (never the
held-out ones, never twice the same crop), keeps the state with the lowest held-out output loss (recomputed here
in ONNX Runtime on the written model: KL for a classifier, MSE for an embedding), stops early, and returns the
model unchanged when it never improves."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxprune import prune, save_model
from onnxprune.calibration import load_calibration
from onnxprune.calibration.images import ImageSet
from onnxprune.errors import UserError

SIZE = 16


def _model(path, embedding=False):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * sc, n) for n, s, sc in
             (("w1", (8, 3, 3, 3), 0.4), ("b1", (8,), 0.1), ("w2", (12, 8, 3, 3), 0.2), ("b2", (12,), 0.1),
              ("w3", (12, 5), 0.5), ("b3", (5,), 0.1))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1] * 4), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c"], pads=[1] * 4), helper.make_node("Relu", ["c"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["g" if embedding else "y"])]
    if embedding:  # a Tanh after the head: not a class distribution (graph/outputs.py)
        nodes.append(helper.make_node("Tanh", ["g"], ["y"]))
    g = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _folder(tmp_path, n=20):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        base = rng.integers(0, 255, (3,))
        img = np.clip(base + rng.normal(0, 60, (22, 28, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:02d}.png")
    return folder


def _held_out_loss(original, pruned, cal, tmp_path, kind="kl"):
    """KL (or MSE) on the held-out samples, both models run by ONNX Runtime from disk."""
    x = np.concatenate([b["x"] for _, b in cal.batches(64, "holdout")])
    path = tmp_path / f"pruned_{id(pruned)}.onnx"
    save_model(pruned, path)

    def run(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    a, b = run(original).astype(np.float64), run(path).astype(np.float64)
    if kind == "mse":
        return float(((a - b) ** 2).mean(1).mean())
    la = a - a.max(1, keepdims=True)
    la -= np.log(np.exp(la).sum(1, keepdims=True))
    lb = b - b.max(1, keepdims=True)
    lb -= np.log(np.exp(lb).sum(1, keepdims=True))
    return float((np.exp(la) * (la - lb)).sum(1).mean())


def test_distillation_trains_on_fresh_crops_of_calibration_images_and_keeps_the_best(tmp_path, monkeypatch):
    path = _model(tmp_path / "m.onnx")
    folder = _folder(tmp_path)
    calls = []
    real = ImageSet.crop

    def crop(self, j, c, seed, img=None):
        calls.append((j, c))
        return real(self, j, c, seed, img)

    monkeypatch.setattr(ImageSet, "crop", crop)
    common = dict(keep_ratio=0.5, refit="none", method="magnitude", augment=1, batch_size=8)
    plain, _ = prune(str(path), str(folder), **common)
    spilled = len(calls)
    assert spilled == 40
    tuned, rep = prune(str(path), str(folder), distill=True, distill_lr=0.01, distill_epochs=6, distill_features=0.5,
                       **common)
    d = rep.distill
    training = calls[spilled + 40:]  # the second run spills its 40 crops again, then distils
    cal = load_calibration(folder, onnx.load(path), preprocess="none", augment=1)
    calib_images = set(cal.image_order[:cal.n_calib // 2].tolist())
    assert len(training) == d["train_samples"] == d["epochs"] * len(calib_images)
    assert {j for j, _ in training} == calib_images, "only calibration images, never the held-out ones"
    assert all(c >= 2 for _, c in training), "never a crop the statistics used"
    assert len(set(training)) == len(training), "a fresh crop every epoch"
    assert d["held_out_samples"] == cal.n_holdout == 4
    assert d["output_loss"] == "kl", "a classifier's outputs are distilled by KL"
    assert d["applied"] and d["best_epoch"] >= 1
    before, after = _held_out_loss(path, plain, cal, tmp_path), _held_out_loss(path, tuned, cal, tmp_path)
    assert before == pytest.approx(d["held_out_loss_before"], rel=1e-3)
    assert after == pytest.approx(d["held_out_loss_best"], rel=1e-3) and after < before
    assert d["history"][d["best_epoch"] - 1]["held_out_loss"] == pytest.approx(d["held_out_loss_best"])
    line = next(t for t in rep.summary().splitlines() if t.startswith("distillation"))
    assert f"kl on 4 held-out samples {d['held_out_loss_before']:.4g} -> {d['held_out_loss_best']:.4g}" in line
    assert f"{d['epochs']} epochs" in line


def test_distillation_stops_early_and_returns_the_model_unchanged_when_it_never_improves(tmp_path):
    path = _model(tmp_path / "m.onnx")
    folder = _folder(tmp_path)
    common = dict(keep_ratio=0.5, refit="full", augment=1, batch_size=8)
    plain, _ = prune(str(path), str(folder), **common)
    same, rep = prune(str(path), str(folder), distill=True, distill_lr=1e4, distill_epochs=10, distill_patience=2,
                      **common)
    d = rep.distill
    assert d["stopped"] == "patience" and d["epochs"] == 2 and not d["applied"] and d["best_epoch"] == 0
    assert all(h["held_out_loss"] > d["held_out_loss_before"] for h in d["history"])
    assert "no epoch improved on it, model left as pruned; 2 epochs, stopped by patience" in rep.summary()
    assert [h["lr"] for h in d["history"]] == pytest.approx([1e4, 1e4 / 3]), "each miss divides the rate by 3"
    for a, b in zip(plain.graph.initializer, same.graph.initializer):
        assert a.name == b.name and np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_distillation_needs_held_out_samples(tmp_path):
    path = _model(tmp_path / "m.onnx")
    folder = _folder(tmp_path)
    with pytest.raises(UserError, match="distill=True: needs held-out"):
        prune(str(path), str(folder), keep_ratio=0.5, holdout=0.0, distill=True)
    with pytest.raises(UserError, match="distill_time=0"):
        prune(str(path), str(folder), keep_ratio=0.5, distill=True, distill_time=0)


@pytest.mark.parametrize("embedding,requested,expected", [(True, "auto", "mse"), (False, "mse", "mse"),
                                                          (True, "kl", "kl")])
def test_distillation_uses_the_output_loss_of_the_output_kind(tmp_path, embedding, requested, expected):
    """An embedding is distilled by the MSE of its outputs (a softmax over an embedding means nothing), as the
    global methods measure it; --output-loss overrides the choice. The recorded held-out losses are what ONNX
    Runtime measures on the written models."""
    path = _model(tmp_path / "m.onnx", embedding=embedding)
    folder = _folder(tmp_path)
    common = dict(keep_ratio=0.5, refit="none", method="magnitude", augment=1, batch_size=8)
    plain, _ = prune(str(path), str(folder), **common)
    tuned, rep = prune(str(path), str(folder), distill=True, distill_lr=0.01, distill_epochs=4, output_loss=requested,
                       **common)
    d = rep.distill
    assert d["output_loss"] == expected
    assert rep.target == {"keep_ratio": 0.5}, "the report's target is the run's, whatever the loss"
    cal = load_calibration(folder, onnx.load(path), preprocess="none", augment=1)
    before = _held_out_loss(path, plain, cal, tmp_path, expected)
    assert before == pytest.approx(d["held_out_loss_before"], rel=1e-3)
    assert d["applied"]
    after = _held_out_loss(path, tuned, cal, tmp_path, expected)
    assert after == pytest.approx(d["held_out_loss_best"], rel=1e-3) and after < before


@pytest.mark.parametrize("tail,why", [("shrink", "Shrink"), ("resize", "antialias")])
def test_distillation_of_a_model_the_twin_cannot_run_is_a_one_line_refusal(tmp_path, tail, why):
    """--distill trains through the twin: a model with an op (or an op setting) it does not know is refused by
    name from the API, and by the command line with exit code 2, no traceback and nothing written."""
    import zoo
    from click.testing import CliRunner

    from onnxprune.cli import main
    path, cal = zoo.twin_unknown_op_model(tmp_path, tail)
    with pytest.raises(UserError, match=f"distill.*{why}.*torch twin"):
        prune(str(path), cal, flops=0.5, round_to=1, allocate="uniform", distill=True)
    np.savez(tmp_path / "cal.npz", **cal)
    out = tmp_path / "out.onnx"
    res = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--calib", str(tmp_path / "cal.npz"),
                                    "--flops", "0.5", "--distill"])
    assert res.exit_code == 2, res.output
    assert why in res.output and "Traceback" not in res.output and len(res.output.strip().splitlines()) <= 3
    assert not out.exists()


def test_distillation_refuses_a_student_twin_that_disagrees_with_onnx_runtime(zoo_models, monkeypatch):
    """The student twin is checked against ONNX Runtime on the pruned model before training: a twin that computes
    something else (its Relu made to leak) would train the wrong function."""
    import zoo

    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    x = {"input": zoo.random_input(z, 32, 3)["input"]}
    zoo.leak_twin_relu(monkeypatch)
    with pytest.raises(UserError, match="distill.*differ from ONNX Runtime"):
        prune(str(z.path), x, flops=0.5, batch_size=16, round_to=1, allocate="uniform", distill=True)
