"""Calibration data that streams in batches, pass after pass, without holding the data set.

Sources: an `.npz`/`.npy` file or a folder of them (keys = model input names, batch first; `.npy`
only for single-input models), a folder of images with a preprocessing preset, a dict of arrays,
an iterable of input dicts, or an ONNX Runtime `CalibrationDataReader`. Files are read row block by
row block on every pass (compressed `.npz` members are decompressed as a stream); iterables and
readers are spilled once to `.npy` files in a temporary folder, image folders once to an 8-bit file of
their crops (`images.py`: the centre crop of every image and, with `augment`, random-resized crops).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from ..graph.inputs import fixed_batch, model_inputs
from ..graph.load import check_regular_file
from ..options import CalibrationOptions, OptionError
from .images import IMAGE_SUFFIXES, ImageSet, holdout_images, spill_images
from .npy_stream import NpyStream, npz_streams
from .part import Part
from .spill import reader_items, spill

log = logging.getLogger("onnxprune")


class Calibration:
    """Re-iterable batches of model inputs; `holdout` trailing samples are kept apart.

    From an image folder the samples are `per_image` consecutive crops of each image, and the held-out
    share is whole images (spread evenly over the files, placed last): `images` is the `ImageSet` and
    `image_order[i]` the image of samples i·per_image ... (i+1)·per_image − 1. A model with a fixed batch
    dimension B (`fixed_batch`, set by `check`) gets batches of exactly B whatever size is asked for."""

    def __init__(self, parts: list[Part], what: str, holdout: float = 0.1, tmpdir=None,
                 images: ImageSet | None = None, image_order: np.ndarray | None = None, per_image: int = 1,
                 seed: int = 0, n_holdout: int | None = None):
        self.parts, self.what, self._tmpdir = parts, what, tmpdir
        self.images, self.image_order, self.per_image, self.seed = images, image_order, per_image, seed
        self.size = sum(p.size for p in parts)
        if self.size == 0:
            raise UserError(f"{what}: holds no samples")
        self.n_holdout = n_holdout if n_holdout is not None else \
            (int(round(self.size * holdout)) if self.size >= 10 else 0)
        self.n_calib = self.size - self.n_holdout
        self.fixed_batch: int | None = None
        if self.n_calib < 1:
            raise OptionError("holdout", holdout, f"holds out all {self.size} samples of {what}, leaving none to "
                              "calibrate on")

    def _ranges(self, split: str) -> Iterator[tuple[int, Part, int, int]]:
        """(index of the part's first sample, part, first row, end row) of each part's rows in `split`."""
        lo, hi = {"all": (0, self.size), "calib": (0, self.n_calib), "holdout": (self.n_calib, self.size)}[split]
        start = 0
        for part in self.parts:
            a, b = max(lo - start, 0), min(hi - start, part.size)  # rows of this part in the split
            if a < b:
                yield start, part, a, b
            start += part.size

    def run_batch(self, batch_size: int) -> int:
        """The batch size runs take: `batch_size`, or the model's fixed batch dimension."""
        return self.fixed_batch or batch_size

    def batches(self, batch_size: int, split: str = "all",
                joined: bool = False) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(index of first sample, batch) for split 'calib', 'holdout' or 'all'. `joined`: for a consumer that runs
        a fixed-batch model B samples at a time itself (`Tap.joins`), batches of `batch_size` rounded down to a
        multiple of B instead of B."""
        if joined and self.fixed_batch:
            batch_size = max(self.fixed_batch, batch_size // self.fixed_batch * self.fixed_batch)
        else:
            batch_size = self.run_batch(batch_size)
        for start, part, a, b in self._ranges(split):
            iters = {k: (v.blocks(batch_size, a, b) if isinstance(v, NpyStream) else _rows(v, a, b, batch_size))
                     for k, v in part.arrays.items()}  # (a generator expression here would see the last v)
            for offset in range(a, b, batch_size):
                yield start + offset, {k: np.ascontiguousarray(next(it)) for k, it in iters.items()}

    def check(self, model: onnx.ModelProto) -> None:
        """Names, dtypes and shapes against the model; finite values (checked on every batch later too)."""
        expected = model_inputs(model)
        for part in self.parts:
            names = set(part.arrays)
            if names != set(expected):
                raise UserError(f"{self.what}: keys {sorted(names)} do not match the model inputs {sorted(expected)}")
            for name, (dtype, shape) in expected.items():
                arr = part.arrays[name]
                a_shape, a_dtype = (arr.shape, arr.dtype)
                if dtype is not None and a_dtype != dtype:
                    raise UserError(f"{self.what}: input '{name}' has dtype {a_dtype}, the model expects "
                                    f"{np.dtype(dtype)}")
                if len(a_shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape[1:], a_shape[1:])):
                    raise UserError(f"{self.what}: input '{name}' has shape {tuple(a_shape)}, the model expects "
                                    f"{tuple('?' if s is None else s for s in shape)}")
        self._check_fixed_batch(model)

    def check_varied(self) -> None:
        """Refuse samples that are all the same (a constant array, one sample repeated): the statistics would
        describe a single input, and every re-fit would imitate the original on it alone. Stops at the first
        sample that differs, in the first batch for any real data set."""
        first: dict[str, np.ndarray] | None = None
        for _, batch in self.batches(256):
            if first is None:
                first = {k: v[:1] for k, v in batch.items()}
            if any(not np.array_equal(v, np.broadcast_to(first[k], v.shape)) for k, v in batch.items()):
                return
        if self.size > 1:
            raise UserError(f"{self.what}: all {self.size} samples are identical; calibration needs samples that "
                            "differ, drawn like the data the model will see")

    def _check_fixed_batch(self, model: onnx.ModelProto) -> None:
        """A model exported without a dynamic batch axis runs on batches of exactly its batch dimension B
        (docs/DESIGN.md, "Fixed batch"): B = 1 takes any data one sample at a time; for B > 1 every part's rows of
        each split must come in whole batches, since a partial batch cannot run."""
        self.fixed_batch = fixed_batch(model)
        if self.fixed_batch is None:
            return
        names = [k for k, (_, shape) in model_inputs(model).items() if shape and shape[0] == self.fixed_batch]
        b = self.fixed_batch
        log.info("input '%s' has a fixed batch dimension %d: runs take %d sample%s at a time",
                 names[0], b, b, "" if b == 1 else "s")
        for split in ("calib", "holdout"):
            counts = [hi - lo for _, _, lo, hi in self._ranges(split)]
            if any(c % b for c in counts):
                raise UserError(f"{self.what}: the model's input '{names[0]}' has a fixed batch dimension {b}, so "
                                f"every run takes {b} samples, but the {split} split holds "
                                f"{' + '.join(map(str, counts))} samples (with --holdout, in each file); export "
                                f"the model with a dynamic batch axis, or give samples in multiples of {b}")


def _rows(v: np.ndarray, a: int, b: int, batch_size: int) -> Iterator[np.ndarray]:
    """Row blocks a..b of one in-memory array."""
    return (v[i:min(i + batch_size, b)] for i in range(a, b, batch_size))


def _check_finite(batch: dict, what: str) -> None:
    for k, v in batch.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise UserError(f"{what}: input '{k}' contains NaN or Inf")


def _file_part(path: Path, input_names: list[str]) -> Part:
    check_regular_file(path, "an .npz or .npy file")  # a FIFO or a device would block or never end
    if path.suffix == ".npz":
        streams = npz_streams(path)
        streams.pop("labels", None)
    elif path.suffix == ".npy":
        if len(input_names) != 1:
            raise UserError(f"{path}: a .npy file feeds single-input models only; use .npz with input names")
        streams = {input_names[0]: NpyStream(lambda: open(path, "rb"), str(path), path.stat().st_size)}
    else:
        raise UserError(f"{path}: expected .npz or .npy")
    sizes = {len(s) for s in streams.values()}
    if len(sizes) > 1:
        raise UserError(f"{path}: arrays hold different numbers of samples {sorted(sizes)}")
    return Part(streams, sizes.pop() if sizes else 0)


def load_calibration(source, model: onnx.ModelProto, holdout: float = 0.1, preprocess: str = "none",
                     image_size: int | None = None, mean=None, std=None, augment: int = 0,
                     seed: int = 0) -> Calibration:
    """Open any supported calibration source for `model` and check it against the model's inputs, and that
    its samples are not all the same. `augment` (image folders only): random-resized crops per image besides
    its centre crop, seeded by `seed`."""
    cal = _open(source, model, holdout, preprocess, image_size, mean, std, augment, seed)
    cal.check_varied()
    return cal


def _open(source, model: onnx.ModelProto, holdout: float, preprocess: str, image_size: int | None, mean, std,
          augment: int, seed: int) -> Calibration:
    inputs = model_inputs(model)
    names = list(inputs)
    tmp = None
    if isinstance(source, Calibration):  # checked against this model (and its fixed batch) too
        source.check(model)
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise UserError(f"{path}: no such calibration file or folder")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() or (
                p.suffix.lower() in IMAGE_SUFFIXES | {".npz", ".npy"} and check_regular_file(p, "a data file")))
            array_files = [p for p in files if p.suffix in (".npz", ".npy")]
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if array_files:
                parts = [_file_part(p, names) for p in array_files]
            elif images:
                if len(names) != 1:
                    raise UserError(f"{path}: image folders feed single-input models only")
                cal = _image_calibration(images, names[0], inputs[names[0]][1], preprocess, mean, std, image_size,
                                         holdout, augment, seed, str(path))
                cal.check(model)
                return cal
            else:
                raise UserError(f"{path}: folder holds no .npz, .npy or image files")
        else:
            parts = [_file_part(path, names)]
        what = str(path)
    elif isinstance(source, dict):
        arrays = {k: np.asarray(v) for k, v in source.items() if k != "labels"}
        sizes = {len(v) for v in arrays.values()}
        if len(sizes) != 1:
            raise UserError("calibration dict: arrays hold different numbers of samples")
        parts, what = [Part(arrays, sizes.pop())], "calibration dict"
    elif hasattr(source, "get_next"):
        parts, tmp = spill(reader_items(source), names, "CalibrationDataReader")
        what = "CalibrationDataReader"
    elif hasattr(source, "__iter__"):
        parts, tmp = spill(source, names, "calibration iterable")
        what = "calibration iterable"
    else:
        raise UserError(f"calibration: unsupported source of type {type(source).__name__}")
    if augment:
        raise OptionError("augment", augment, f"applies to image folders only; {what} is not one")
    cal = Calibration(parts, what, holdout, tmp)
    cal.check(model)
    return cal


def _image_calibration(files: list[Path], name: str, shape: tuple, preprocess: str, mean, std, image_size,
                       holdout: float, augment: int, seed: int, what: str) -> Calibration:
    """Crops of every image, the held-out images last (see `Calibration`)."""
    images = ImageSet(files, name, shape, preprocess, mean, std, image_size)
    per = 1 + int(augment)
    held = holdout_images(len(images), holdout, len(images) * per)
    order = np.concatenate([np.setdiff1d(np.arange(len(images)), held), held])
    stream, tmp = spill_images(images, order, per, seed, what)
    return Calibration([Part({name: stream}, len(order) * per)], what, holdout, tmp, images=images,
                       image_order=order, per_image=per, seed=seed, n_holdout=len(held) * per)


def checked_batches(cal: Calibration, batch_size: int, split: str = "all", joined: bool = False):
    for start, batch in cal.batches(batch_size, split, joined):
        _check_finite(batch, cal.what)
        yield start, batch


def token_mask_input(model: onnx.ModelProto, name: str) -> str | None:
    """The model input whose zeros mark padding tokens (docs/DESIGN.md, "Statistics"): `name` when the model
    has a 2-D input of that name ([batch, tokens]), None when `name` is '' or is the default and absent."""
    if not name:
        return None
    inputs = model_inputs(model)
    if name not in inputs:
        if name == CalibrationOptions.token_mask_input:
            return None
        raise OptionError("token_mask_input", name,
                          f"the model has no input of that name (inputs: {', '.join(inputs)})")
    _, shape = inputs[name]
    if len(shape) != 2:
        raise OptionError("token_mask_input", name,
                          f"a token mask is [batch, tokens]; this input has rank {len(shape)}")
    return name
