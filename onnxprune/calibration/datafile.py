"""Data files: `.npz` archives whose keys are the model's input names (batch first), plus an
optional `labels` array of class indices. Loaded with allow_pickle=False."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx

from ..errors import UserError
from ..graph.inputs import model_inputs


def load_npz(path, model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs and optional labels from an .npz, checked against the model's inputs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such data file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise UserError(f"{path}: holds pickled objects, which are not loaded ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from None
    labels = arrays.pop("labels", None)
    inputs = check_inputs(arrays, model, str(path))
    n = len(next(iter(inputs.values())))
    if labels is not None and (labels.ndim != 1 or len(labels) != n):
        raise UserError(f"{path}: 'labels' must be a 1-D array with one entry per sample ({n})")
    return inputs, labels


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
