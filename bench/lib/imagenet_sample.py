"""The ImageNet sample (`../shared/imagenet-sample/`: 500 real ImageNet photos, one per even class) and its
class folds, for the benchmarks: fold A calibrates on classes ≡ 0 (mod 4) and evaluates on classes ≡ 2
(mod 4), fold B the reverse. The images are read where they are, never copied: a fold's calibration
folder is a temporary folder of symbolic links."""
from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
FOLDS = {"A": (0, 2), "B": (2, 0)}  # fold -> (calibration class residue mod 4, evaluation residue)


def sample_dir() -> pathlib.Path | None:
    """The sample folder: $IMAGENET_SAMPLE, else ../shared/imagenet-sample beside the repository (CI's
    layout), else None."""
    for p in (os.environ.get("IMAGENET_SAMPLE"), ROOT.parent / "shared" / "imagenet-sample",
              pathlib.Path("/work/shared/imagenet-sample")):
        if p and pathlib.Path(p).is_dir():
            return pathlib.Path(p)
    return None


def files() -> list[tuple[int, pathlib.Path]]:
    """(class index, path) of every image, sorted by class."""
    d = sample_dir()
    if d is None:
        raise FileNotFoundError("imagenet-sample not found (set IMAGENET_SAMPLE or put it in ../shared/)")
    out = [(int(p.name.split("_", 1)[0]), p) for p in d.iterdir() if p.suffix.lower() == ".jpg"]
    return sorted(out)


def split(fold: str) -> tuple[list[tuple[int, pathlib.Path]], list[tuple[int, pathlib.Path]]]:
    """(calibration, evaluation) images of a fold."""
    cal, ev = FOLDS[fold]
    items = files()
    return [x for x in items if x[0] % 4 == cal], [x for x in items if x[0] % 4 == ev]


def link_folder(items, parent: str | None = None) -> tempfile.TemporaryDirectory:
    """A temporary folder of symbolic links to the images (a calibration folder for onnxprune)."""
    tmp = tempfile.TemporaryDirectory(prefix="imagenet-sample-", dir=parent)
    for _, p in items:
        os.symlink(p, os.path.join(tmp.name, p.name))
    return tmp


def eval_data(items, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Centre crops (shorter side 256, crop 224, ImageNet mean/std: onnxprune's `imagenet` preset) and labels."""
    from onnxprune.calibration.images import ImageSet
    images = ImageSet([p for _, p in items], "input", (1, 3, size, size), "imagenet")
    x = np.concatenate([images.to_input(images.crop(j, 0, 0)[None]) for j in range(len(images))])
    return x, np.array([c for c, _ in items], dtype=np.int64)
