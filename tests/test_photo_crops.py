"""models/photo_crops.py: the photo split and the crops fed to the ImageNet benchmark."""

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")
pytest.importorskip("PIL")

from models import photo_crops as pc  # noqa: E402


def test_splits_disjoint_and_nonempty():
    cal, ev = set(pc.CALIBRATION), set(pc.EVALUATION)
    assert cal and ev and not cal & ev
    assert len(cal) == len(pc.CALIBRATION) and len(ev) == len(pc.EVALUATION)  # no duplicates
    assert {"chelsea", "coffee"} <= ev
    assert len(cal) > len(ev)
    # the same image under two names would leak evaluation photos into calibration
    fingerprints = {name: pc.photo(name)[::7, ::7].tobytes() for name in cal | ev}
    assert len(set(fingerprints.values())) == len(fingerprints)


@pytest.mark.parametrize("name", pc.CALIBRATION + pc.EVALUATION)
def test_photos_are_rgb_uint8(name):
    img = pc.photo(name)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert min(img.shape[:2]) >= 150 and img.std() > 5


@pytest.mark.parametrize("split", ["calibration", "evaluation"])
def test_shape_dtype_normalisation(split):
    x = pc.crops(split, 24, seed=3)
    assert x.shape == (24, 3, 224, 224) and x.dtype == np.float32
    assert x.flags.c_contiguous and np.isfinite(x).all()
    # ImageNet normalisation: pixels in [0, 1] map to [(0 - mean) / std, (1 - mean) / std]
    lo, hi = (0 - pc.MEAN) / pc.STD, (1 - pc.MEAN) / pc.STD
    per_channel = x.transpose(1, 0, 2, 3).reshape(3, -1)
    assert (per_channel.min(1) >= lo - 1e-4).all() and (per_channel.max(1) <= hi + 1e-4).all()
    assert np.abs(per_channel.mean(1)).max() < 1.5  # roughly centred, not raw [0, 255] or [0, 1]
    assert per_channel.std(1).min() > 0.3
    assert len({x[i].tobytes() for i in range(len(x))}) == len(x)  # all crops differ


def test_deterministic_per_seed_and_prefix_stable():
    a = pc.crops("calibration", 8, seed=11)
    np.testing.assert_array_equal(a, pc.crops("calibration", 8, seed=11))
    np.testing.assert_array_equal(a[:5], pc.crops("calibration", 5, seed=11))
    np.testing.assert_array_equal(a[5:], pc.crops("calibration", 3, seed=11, start=5))


def test_different_seeds_and_splits_differ():
    a = pc.crops("calibration", 6, seed=0)
    b = pc.crops("calibration", 6, seed=1)
    assert all(not np.array_equal(a[i], b[i]) for i in range(6))
    e = pc.crops("evaluation", 6, seed=0)
    assert all(not np.array_equal(a[i], e[i]) for i in range(6))


def test_flips_and_scales_vary():
    """Crops cover a range of scales and both orientations (checked through the crop boxes)."""
    rng = np.random.default_rng(0)
    h, w = 400, 600
    areas = []
    for _ in range(300):
        top, left, ch, cw = pc._crop_box(rng, h, w)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        areas.append(ch * cw / (h * w))
    assert min(areas) < 0.2 and max(areas) > 0.7


def test_write_npy_matches_crops(tmp_path):
    p = pc.write_npy(str(tmp_path / "c.npy"), "evaluation", 5, seed=2, block=2)
    np.testing.assert_array_equal(np.load(p), pc.crops("evaluation", 5, seed=2))


def test_unknown_split():
    with pytest.raises(ValueError):
        pc.crops("train", 1)


def test_folds_partition_all_photos():
    folds = pc.folds()
    names = [n for f in folds for n in f]
    assert len(folds) == 4 and all(folds)
    assert sorted(names) == sorted(pc.CALIBRATION + pc.EVALUATION)  # each photo in exactly one fold
    assert pc.folds() == folds and pc.folds(seed=1) != folds  # seeded


def test_crops_of_a_photo_tuple_use_only_those_photos():
    """A one-photo tuple gives crops of that photo alone: their colours stay within its pixel range."""
    x = pc.crops(("coins",), 6, seed=0)  # a gray photo: every crop has R == G == B before normalisation
    rgb = x.transpose(0, 2, 3, 1) * pc.STD + pc.MEAN
    np.testing.assert_allclose(rgb[..., 0], rgb[..., 1], atol=1e-5)
    np.testing.assert_array_equal(x, pc.crops(("coins",), 6, seed=0))
    with pytest.raises(ValueError):
        pc.crops(("coins", "no_such_photo"), 1)
