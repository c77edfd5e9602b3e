"""Iterables of input dicts (and ORT CalibrationDataReaders) written once to `.npy` files, so that every
later pass streams them from disk."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .npy_stream import NpyStream
from .part import Part


def spill(items, input_names: list[str], what: str) -> tuple[list[Part], tempfile.TemporaryDirectory]:
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
        arrays[k] = NpyStream(lambda npy=npy: open(npy, "rb"), what)
    return [Part(arrays, count)], tmp


def reader_items(reader):
    while (item := reader.get_next()) is not None:
        yield item
