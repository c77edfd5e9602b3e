"""Slow: the ImageNet sample (`../shared/imagenet-sample`, real JPEGs) as an augmented calibration folder, end
to end with allocate=output and distillation on a zoo model (issue 13). Skipped where the folder is absent."""
import pathlib

import numpy as np
import onnx
import pytest
from helpers import load_in_ort

from onnxprune import prune, save_model
from onnxprune.analysis.cost import model_macs
from onnxprune.calibration import load_calibration

pytestmark = pytest.mark.slow
SAMPLE = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "imagenet-sample"


@pytest.fixture
def photos(tmp_path):
    if not SAMPLE.is_dir():
        pytest.skip(f"{SAMPLE} is absent (the ImageNet sample lives beside the repository in CI)")
    files = sorted(SAMPLE.glob("*.jpg"))[:12]
    folder = tmp_path / "photos"
    folder.mkdir()
    for f in files:  # links, never copies of the images
        (folder / f.name).symlink_to(f)
    return folder


def test_augmented_real_photos_prune_with_output_allocation_and_distillation(photos, zoo_models, tmp_path):
    z = next(z for z in zoo_models if z.name == "mbv3_se" and z.exporter == "ts17")
    model = onnx.load(z.path)
    cal = load_calibration(photos, model, holdout=0.25, preprocess="imagenet", augment=2, seed=3)
    again = load_calibration(photos, model, holdout=0.25, preprocess="imagenet", augment=2, seed=3)
    a = np.concatenate([b["input"] for _, b in cal.batches(5)])
    b = np.concatenate([b["input"] for _, b in again.batches(7)])
    assert a.shape == (36, *z.input_shape[1:]) and np.array_equal(a, b), "seeded crops of real JPEGs"
    assert cal.n_holdout == 9, "3 whole photos held out, each with its 3 crops"
    pruned, rep = prune(str(z.path), str(photos), flops=0.5, preprocess="imagenet", augment=2, seed=3,
                        allocate="output", distill=True, distill_time=60, distill_epochs=3, batch_size=8,
                        round_to=1, holdout=0.25)
    out = tmp_path / "pruned.onnx"
    save_model(pruned, str(out))
    sess = load_in_ort(out)
    y = sess.run(None, {sess.get_inputs()[0].name: a[:4]})[0]
    assert np.isfinite(y).all()
    assert abs(model_macs(onnx.load(out)) / model_macs(model) - 0.5) <= 0.02 * 0.5 + 1e-9
    assert rep.allocation["chosen"] in ("uniform", "halfway", "output")
    assert rep.distill["held_out_samples"] == 9 and rep.distill["train_samples"] > 0
