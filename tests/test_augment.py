"""Image-folder calibration with augmentation (issue 13): seeded crops that are the same in every pass and
for every batch size, centre crops as the preset makes them, random-resized crops that cover the image and
flip, and held-out splits made of whole images."""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper
from PIL import Image

from onnxprune.calibration import load_calibration
from onnxprune.calibration.images import CROP_SCALE, _random_box
from onnxprune.cli import main
from onnxprune.errors import UserError

SIZE = 16


def _model(size=SIZE):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "m",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, size, size])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _folder(tmp_path, n=10, shape=(20, 26)):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, shape + (3,), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def _all(cal, batch, split="all"):
    return np.concatenate([b["x"] for _, b in cal.batches(batch, split)])


def test_crops_are_seeded_and_the_same_in_every_pass_and_batching(tmp_path):
    folder = _folder(tmp_path)
    cal = load_calibration(folder, _model(), preprocess="imagenet", augment=3, seed=5)
    assert cal.size == 40 and cal.per_image == 4
    first = _all(cal, 1)
    assert np.array_equal(first, _all(cal, 7)) and np.array_equal(first, _all(cal, 40))
    again = load_calibration(folder, _model(), preprocess="imagenet", augment=3, seed=5)
    assert np.array_equal(first, _all(again, 16))
    other = load_calibration(folder, _model(), preprocess="imagenet", augment=3, seed=6)
    x = _all(other, 16)
    centre = np.arange(0, 40, 4)
    assert np.array_equal(first[centre], x[centre]), "the centre crop does not depend on the seed"
    random = np.setdiff1d(np.arange(40), centre)
    assert not np.allclose(first[random], x[random]), "another seed draws other crops"
    assert all(not np.allclose(first[i], first[i + 1]) for i in range(0, 40, 4)), "crops of an image differ"


def test_centre_crops_are_the_preset_and_samples_are_image_major(tmp_path):
    """Sample 4·i is image order[i]'s centre crop, computed here with PIL as the preset defines it."""
    folder = _folder(tmp_path)
    cal = load_calibration(folder, _model(), preprocess="imagenet", augment=3, seed=1)
    x = _all(cal, 8)
    files = sorted(folder.iterdir())
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    resize = round(SIZE * 256 / 224)
    for i, j in enumerate(cal.image_order.tolist()):
        img = Image.open(files[j]).convert("RGB")
        s = resize / min(img.size)
        img = img.resize((max(SIZE, round(img.size[0] * s)), max(SIZE, round(img.size[1] * s))),
                         Image.Resampling.BILINEAR)
        left, top = (img.size[0] - SIZE) // 2, (img.size[1] - SIZE) // 2
        arr = (np.asarray(img.crop((left, top, left + SIZE, top + SIZE)), np.float32) / 255.0 - mean) / std
        assert np.allclose(x[4 * i], arr.transpose(2, 0, 1), atol=1e-6)


def test_held_out_samples_are_whole_images_spread_over_the_folder(tmp_path):
    folder = _folder(tmp_path, n=20)
    cal = load_calibration(folder, _model(), preprocess="imagenet", holdout=0.2, augment=2, seed=0)
    assert cal.n_holdout == 4 * 3 and cal.n_calib == 16 * 3
    held = cal.image_order[16:]
    assert sorted(held.tolist()) == [2, 7, 12, 17]
    assert len(set(cal.image_order.tolist())) == 20
    # the held-out split holds exactly the crops of the held-out images (their centre crops identify them)
    x = _all(cal, 5)
    solo = load_calibration(folder, _model(), preprocess="imagenet", holdout=0.0, augment=0)
    centres = _all(solo, 20)
    got = [int(np.argmin(((centres - x[i]) ** 2).sum((1, 2, 3)))) for i in range(cal.n_calib, cal.size, 3)]
    assert got == held.tolist()


def test_random_resized_crops_cover_the_image_and_flip(tmp_path):
    """Over many draws the boxes cover every pixel, each has an area share within CROP_SCALE, and about
    half of the crops of a left-to-right ramp come out mirrored."""
    rng = np.random.default_rng(0)
    w, h = 60, 40
    seen = np.zeros((h, w), bool)
    for _ in range(400):
        left, top, right, bottom = _random_box((w, h), rng)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        share = (right - left) * (bottom - top) / (w * h)
        assert CROP_SCALE[0] * 0.9 <= share <= 1.0
        seen[top:bottom, left:right] = True
    assert seen.all()
    folder = tmp_path / "ramp"
    folder.mkdir()
    ramp = np.tile(np.linspace(0, 255, 40).astype(np.uint8)[None, :, None], (30, 1, 3))
    Image.fromarray(ramp).save(folder / "ramp.png")
    cal = load_calibration(folder, _model(), preprocess="none", holdout=0.0, augment=60, seed=3)
    x = _all(cal, 61)[:, 0]
    slope = x[:, :, -1].mean(1) - x[:, :, 0].mean(1)
    assert slope[0] > 0, "the centre crop is not flipped"
    flipped = (slope[1:] < 0).mean()
    assert 0.3 < flipped < 0.7


def test_augment_is_refused_for_arrays_and_checked(tmp_path):
    np.save(tmp_path / "c.npy", np.zeros((12, 3, SIZE, SIZE), np.float32))
    with pytest.raises(UserError, match="augment=2: applies to image folders only"):
        load_calibration(tmp_path / "c.npy", _model(), augment=2)
    onnx.save(_model(), tmp_path / "m.onnx")
    res = CliRunner().invoke(main, ["prune", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--calib",
                                    str(tmp_path / "c.npy"), "--keep-ratio", "0.5", "--augment", "-1"])
    assert res.exit_code == 2 and "--augment -1" in res.output and not (tmp_path / "o.onnx").exists()
