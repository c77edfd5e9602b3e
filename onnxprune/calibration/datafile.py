"""Data files: `.npz` archives whose keys are the model's input names (batch first), plus an
optional `labels` array of class indices. Read with allow_pickle=False, row block by row block (`open_data`),
so `eval` never holds a data set whole."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from ..graph.inputs import model_inputs
from ..graph.load import check_regular_file
from .npy_stream import npz_streams
from .part import Part
from .source import Calibration


def open_data(path, model: onnx.ModelProto) -> tuple[Calibration, np.ndarray | None]:
    """The inputs of an .npz as streamed batches (names, dtypes and shapes checked against the model's
    inputs; NaN/Inf are checked batch by batch by `calibration.checked_batches`), and its labels if any."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such data file")
    check_regular_file(path, "an .npz data file")
    streams = npz_streams(path)
    labels_stream = streams.pop("labels", None)
    if not streams:
        raise UserError(f"{path}: holds no arrays (keys {sorted(model_inputs(model))} expected)")
    sizes = {len(s) for s in streams.values()}
    if len(sizes) > 1:
        raise UserError(f"{path}: inputs hold different numbers of samples {sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise UserError(f"{path}: holds no samples")
    data = Calibration([Part(streams, n)], str(path), holdout=0.0)
    data.check(model)
    labels = None
    if labels_stream is not None:
        if len(labels_stream.shape) != 1 or len(labels_stream) != n:
            raise UserError(f"{path}: 'labels' must be a 1-D array with one entry per sample ({n})")
        labels = np.concatenate(list(labels_stream.blocks(1 << 20)))
    return data, labels


def load_npz(path, model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs and optional labels from an .npz, checked against the model's inputs, read whole (`open_data`
    streams them)."""
    data, labels = open_data(path, model)
    inputs = {k: np.concatenate([b[k] for _, b in data.batches(1 << 16)]) for k in data.parts[0].arrays}
    return check_inputs(inputs, model, str(path)), labels


def check_inputs(arrays: dict, model: onnx.ModelProto, what: str) -> dict[str, np.ndarray]:
    """Names, dtypes, ranks and fixed dims of `arrays` must match the model's inputs."""
    expected = model_inputs(model)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise UserError(f"{what}: keys {sorted(arrays)} do not match the model inputs {sorted(expected)}"
                        + (f" (missing {missing})" if missing else "") + (f" (unexpected {extra})" if extra else ""))
    sizes = set()
    for name, (dtype, shape) in expected.items():
        arr = arrays[name]
        if dtype is not None and arr.dtype != dtype:
            raise UserError(f"{what}: input '{name}' has dtype {arr.dtype}, the model expects {np.dtype(dtype)}")
        if arr.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape[1:], arr.shape[1:])):
            raise UserError(f"{what}: input '{name}' has shape {arr.shape}, the model expects "
                            f"{tuple('?' if s is None else s for s in shape)}")
        if len(arr) == 0:
            raise UserError(f"{what}: input '{name}' holds no samples")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise UserError(f"{what}: input '{name}' contains NaN or Inf")
        sizes.add(len(arr))
    if len(sizes) > 1:
        raise UserError(f"{what}: inputs hold different numbers of samples {sorted(sizes)}")
    return arrays


def batches(inputs: dict[str, np.ndarray], batch_size: int):
    n = len(next(iter(inputs.values())))
    for i in range(0, n, batch_size):
        yield {k: v[i:i + batch_size] for k, v in inputs.items()}
