"""Calibration data that streams in batches, pass after pass, without holding the data set.

Sources: an `.npz`/`.npy` file or a folder of them (keys = model input names, batch first; `.npy`
only for single-input models), a folder of images with a preprocessing preset, a dict of arrays,
an iterable of input dicts, or an ONNX Runtime `CalibrationDataReader`. Files are read row block by
row block on every pass (compressed `.npz` members are decompressed as a stream); iterables and
readers are spilled once to `.npy` files in a temporary folder.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from .data import model_inputs
from .errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PRESETS = {"imagenet": dict(resize=256, size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
           "none": dict(resize=None, size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))}


class _NpyStream:
    """Row blocks of one `.npy` array, read from a file or a zip member on each pass."""

    def __init__(self, opener: Callable, what: str):
        self.opener, self.what = opener, what
        with opener() as fh:
            self.shape, self.dtype = self._header(fh)

    def _header(self, fh):
        try:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
        except ValueError as exc:
            raise UserError(f"{self.what}: not a readable .npy array ({exc})") from None
        if dtype.hasobject:
            raise UserError(f"{self.what}: holds pickled objects, which are not loaded")
        if fortran and len(shape) > 1:
            raise UserError(f"{self.what}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray")
        if len(shape) == 0:
            raise UserError(f"{self.what}: is a scalar, expected arrays with the batch first")
        return shape, dtype

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self, rows: int, first: int = 0, last: int | None = None) -> Iterator[np.ndarray]:
        """Blocks of `rows` rows from row `first` to `last` (the end); rows before `first` are skipped
        by seeking, not read."""
        last = len(self) if last is None else last
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with self.opener() as fh:
            self._header(fh)  # skip it
            if first:
                fh.seek(first * row_bytes, os.SEEK_CUR)
            for start in range(first, last, rows):
                n = min(rows, last - start)
                buf = fh.read(n * row_bytes)
                if len(buf) != n * row_bytes:
                    raise UserError(f"{self.what}: file is truncated")
                yield np.frombuffer(buf, dtype=self.dtype).reshape((n,) + tuple(self.shape[1:]))


def _npz_streams(path: Path) -> dict[str, _NpyStream]:
    try:
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
        zf.close()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from None

    def opener(member):
        def open_member():
            z = zipfile.ZipFile(path)
            fh = z.open(member)
            return _Closing(fh, z)
        return open_member
    return {n[:-4]: _NpyStream(opener(n), f"{path}[{n[:-4]}]") for n in names if n.endswith(".npy")}


class _Closing:
    """A zip member whose archive closes with it."""

    def __init__(self, fh, archive):
        self.fh, self.archive = fh, archive

    def read(self, n=-1):
        return self.fh.read(n)

    def seek(self, offset, whence=os.SEEK_SET):
        return self.fh.seek(offset, whence)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()
        self.archive.close()


@dataclass
class _Part:
    """One file's (or one dict's) arrays, by input name."""
    arrays: dict[str, object]  # _NpyStream or np.ndarray
    size: int


class Calibration:
    """Re-iterable batches of model inputs; `holdout` trailing samples are kept apart."""

    def __init__(self, parts: list[_Part], what: str, holdout: float = 0.1, tmpdir=None):
        self.parts, self.what, self._tmpdir = parts, what, tmpdir
        self.size = sum(p.size for p in parts)
        if self.size == 0:
            raise UserError(f"{what}: holds no samples")
        self.n_holdout = int(round(self.size * holdout)) if self.size >= 10 else 0
        self.n_calib = self.size - self.n_holdout

    def batches(self, batch_size: int, split: str = "all") -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(index of first sample, batch) for split 'calib', 'holdout' or 'all'."""
        lo, hi = {"all": (0, self.size), "calib": (0, self.n_calib), "holdout": (self.n_calib, self.size)}[split]
        start = 0
        for part in self.parts:
            a, b = max(lo - start, 0), min(hi - start, part.size)  # rows of this part in the split
            if a < b:
                iters = {k: (v.blocks(batch_size, a, b) if isinstance(v, _NpyStream) else
                             (v[i:min(i + batch_size, b)] for i in range(a, b, batch_size)))
                         for k, v in part.arrays.items()}
                for offset in range(a, b, batch_size):
                    yield start + offset, {k: np.ascontiguousarray(next(it)) for k, it in iters.items()}
            start += part.size

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


def _check_finite(batch: dict, what: str) -> None:
    for k, v in batch.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise UserError(f"{what}: input '{k}' contains NaN or Inf")


def _file_part(path: Path, input_names: list[str]) -> _Part:
    if path.suffix == ".npz":
        streams = _npz_streams(path)
        streams.pop("labels", None)
    elif path.suffix == ".npy":
        if len(input_names) != 1:
            raise UserError(f"{path}: a .npy file feeds single-input models only; use .npz with input names")
        streams = {input_names[0]: _NpyStream(lambda: open(path, "rb"), str(path))}
    else:
        raise UserError(f"{path}: expected .npz or .npy")
    sizes = {len(s) for s in streams.values()}
    if len(sizes) > 1:
        raise UserError(f"{path}: arrays hold different numbers of samples {sorted(sizes)}")
    return _Part(streams, sizes.pop() if sizes else 0)


def _image_items(files: list[Path], input_name: str, shape: tuple, preprocess: str, mean=None, std=None,
                 size=None) -> Iterator[dict[str, np.ndarray]]:
    """The images decoded one at a time as input dicts of batch 1 (`_spill` writes them to disk, so an
    image folder is never held in memory whole)."""
    from PIL import Image
    if preprocess not in PRESETS:
        raise UserError(f"--preprocess {preprocess}: choose from {', '.join(PRESETS)}")
    p = dict(PRESETS[preprocess])
    if len(shape) != 4:
        raise UserError(f"image calibration needs a model input of rank 4, '{input_name}' has rank {len(shape)}")
    nchw = shape[1] in (1, 3)
    h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    channels = shape[1] if nchw else shape[3]
    size = size or h or w or p["size"]  # the model's input size wins over the preset's
    if size is None:
        raise UserError("image calibration: model input size is symbolic; give --image-size")
    resize = round(size * p["resize"] / p["size"]) if p["resize"] else size  # imagenet: 256 -> 224 crop ratio
    mean = np.asarray(mean or p["mean"], np.float32)[:channels]
    std = np.asarray(std or p["std"], np.float32)[:channels]
    for f in files:
        try:
            img = Image.open(f).convert("RGB" if channels == 3 else "L")
        except Exception as exc:
            raise UserError(f"{f}: not a readable image ({type(exc).__name__})") from None
        scale = resize / min(img.size)
        img = img.resize((max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))),
                         Image.BILINEAR)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255.0
        arr = arr.reshape(size, size, channels)
        arr = (arr - mean) / std
        yield {input_name: (arr.transpose(2, 0, 1) if nchw else arr)[None]}


def _spill(items, input_names: list[str], what: str) -> tuple[list[_Part], tempfile.TemporaryDirectory]:
    """Write an iterable of input dicts to .npy files once, so later passes stream from disk."""
    tmp = tempfile.TemporaryDirectory(prefix="onnxprune-calib-")
    handles, shapes, count = {}, {}, 0
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != set(input_names):
            raise UserError(f"{what}: item {i} is not a dict with keys {sorted(input_names)}")
        for k, v in item.items():
            v = np.asarray(v)
            if v.dtype.hasobject:
                raise UserError(f"{what}: item {i} input '{k}' holds Python objects")
            if k not in handles:
                handles[k] = open(Path(tmp.name) / f"{k}.raw", "wb")
                shapes[k] = (v.shape[1:], v.dtype)
            elif (v.shape[1:], v.dtype) != shapes[k]:
                raise UserError(f"{what}: item {i} input '{k}' has shape {v.shape}, earlier items {shapes[k][0]}")
            handles[k].write(np.ascontiguousarray(v).tobytes())
        count += len(next(iter(item.values())))
    arrays = {}
    for k, fh in handles.items():
        fh.close()
        raw = Path(tmp.name) / f"{k}.raw"
        shape, dtype = shapes[k]
        npy = Path(tmp.name) / f"{k}.npy"
        with open(npy, "wb") as out:
            np.lib.format.write_array_header_2_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                       "fortran_order": False, "shape": (count,) + tuple(shape)})
            with open(raw, "rb") as src:
                while chunk := src.read(1 << 24):
                    out.write(chunk)
        raw.unlink()
        arrays[k] = _NpyStream(lambda npy=npy: open(npy, "rb"), what)
    return [_Part(arrays, count)], tmp


def _reader_items(reader):
    while (item := reader.get_next()) is not None:
        yield item


def load_calibration(source, model: onnx.ModelProto, holdout: float = 0.1, preprocess: str = "none",
                     image_size: int | None = None, mean=None, std=None) -> Calibration:
    """Open any supported calibration source for `model` and check it against the model's inputs."""
    inputs = model_inputs(model)
    names = list(inputs)
    tmp = None
    if isinstance(source, Calibration):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise UserError(f"{path}: no such calibration file or folder")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file())
            arrays = [p for p in files if p.suffix in (".npz", ".npy")]
            images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            if arrays:
                parts = [_file_part(p, names) for p in arrays]
            elif images:
                if len(names) != 1:
                    raise UserError(f"{path}: image folders feed single-input models only")
                parts, tmp = _spill(_image_items(images, names[0], inputs[names[0]][1], preprocess, mean, std,
                                                 image_size), names, str(path))
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
        parts, what = [_Part(arrays, sizes.pop())], "calibration dict"
    elif hasattr(source, "get_next"):
        parts, tmp = _spill(_reader_items(source), names, "CalibrationDataReader")
        what = "CalibrationDataReader"
    elif hasattr(source, "__iter__"):
        parts, tmp = _spill(source, names, "calibration iterable")
        what = "calibration iterable"
    else:
        raise UserError(f"calibration: unsupported source of type {type(source).__name__}")
    cal = Calibration(parts, what, holdout, tmp)
    cal.check(model)
    return cal


def checked_batches(cal: Calibration, batch_size: int, split: str = "all"):
    for start, batch in cal.batches(batch_size, split):
        _check_finite(batch, cal.what)
        yield start, batch
