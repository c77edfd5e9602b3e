"""Natural-photo crops for ImageNet models, from images that ship with scikit-image and scikit-learn.

No ImageNet data is available offline, so calibration and evaluation use random crops of the
real photos in ``skimage.data`` and ``sklearn.datasets.load_sample_images()``: torchvision-style
RandomResizedCrop (8%-100% of the area, aspect 3/4-4/3), random horizontal flip, resized to
224x224 (PIL bilinear, antialiased), ImageNet mean/std, float32 NCHW.

The photos are split once into CALIBRATION and EVALUATION photos (disjoint), so a pruned model
is judged on photos it was never calibrated on.  Crop i of (split, seed) depends only on
(split, seed, i): ``crops(s, n, seed)[:k] == crops(s, k, seed)`` and blocks can be generated
piecewise (``start=``) into a memory-mapped ``.npy`` (``write_npy``) for large n.

    python models/photo_crops.py            # list the photos and their split
"""
from __future__ import annotations

import functools
import zlib

import numpy as np

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SIZE = 224
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)

# Real photographs only (no synthetic images, binary masks, or tiny crops); gray ones become RGB.
# skimage.data.cat is the same image as chelsea and is not listed twice.
EVALUATION = ("chelsea", "coffee", "astronaut", "motorcycle", "flower")
CALIBRATION = ("camera", "coins", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
               "colorwheel", "china", "moon", "brick", "grass", "gravel", "clock", "page", "text")
SPLITS = {"calibration": CALIBRATION, "evaluation": EVALUATION}


def _load(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images
        s = load_sample_images()
        return next(img for f, img in zip(s.filenames, s.images) if f.endswith(f"{name}.jpg"))
    import skimage.data
    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]  # left view
    return getattr(skimage.data, name)()


@functools.cache
def photo(name: str) -> np.ndarray:
    """The photo as HxWx3 uint8 (gray replicated to RGB, alpha dropped)."""
    img = np.asarray(_load(name))
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def _crop_box(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop.get_params: (top, left, height, width)."""
    area = h * w
    log_ratio = np.log(RATIO)
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ar = np.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(np.sqrt(target * ar))), int(round(np.sqrt(target / ar)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    # fallback: central crop at the nearest allowed aspect ratio
    ar = w / h
    if ar < RATIO[0]:
        cw, ch = w, int(round(w / RATIO[0]))
    elif ar > RATIO[1]:
        ch, cw = h, int(round(h * RATIO[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _one(split: str | tuple, seed: int, i: int) -> np.ndarray:
    from PIL import Image
    names = SPLITS[split] if isinstance(split, str) else split
    key = split if isinstance(split, str) else ",".join(split)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode()), i])
    img = photo(names[int(rng.integers(len(names)))])
    top, left, ch, cw = _crop_box(rng, *img.shape[:2])
    pil = Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    x = np.asarray(pil, np.float32) / 255.0
    if rng.random() < 0.5:
        x = x[:, ::-1]
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def crops(split: str | tuple, n: int, seed: int = 0, start: int = 0) -> np.ndarray:
    """Crops start .. start+n-1 of `split` ("calibration" or "evaluation", or a tuple of photo names)
    for `seed`: float32 [n, 3, 224, 224], ImageNet-normalised."""
    if isinstance(split, str) and split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)} or a tuple of photos, not {split!r}")
    if not isinstance(split, str) and not set(split) <= set(CALIBRATION + EVALUATION):
        raise ValueError(f"unknown photos in {split!r}")
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for k in range(n):
        out[k] = _one(split, seed, start + k)
    return out


def folds(k: int = 4, seed: int = 0) -> list[tuple[str, ...]]:
    """All photos (both splits) in `k` disjoint folds of a seeded random order: a second protocol,
    where each fold in turn is evaluated and the other photos calibrate."""
    names = sorted(CALIBRATION + EVALUATION)
    order = np.random.default_rng(seed).permutation(len(names))
    return [tuple(names[i] for i in order[j::k]) for j in range(k)]


def write_npy(path: str, split: str | tuple, n: int, seed: int = 0, block: int = 256) -> str:
    """crops(split, n, seed) written block by block to a .npy file (never all in memory)."""
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 3, SIZE, SIZE))
    for s in range(0, n, block):
        mm[s:s + block] = crops(split, min(block, n - s), seed, start=s)
    mm.flush()
    del mm
    return path


if __name__ == "__main__":
    for split, names in SPLITS.items():
        print(split)
        for name in names:
            print(f"  {name:22s} {photo(name).shape}")
