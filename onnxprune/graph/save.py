"""Writing outputs: path checks before any work, atomic writes, external data for large models."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from onnx import external_data_helper

from ..errors import UserError
from .skeleton import structure, too_big


def check_output_path(out: str | os.PathLike, *inputs: str | os.PathLike) -> Path:
    """Validate an output path before any work is done."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out}: output path is a folder")
    if not out.parent.exists():
        raise UserError(f"{out}: output folder {out.parent} does not exist")
    if not out.parent.is_dir():
        raise UserError(f"{out}: {out.parent} is not a folder")
    for inp in inputs:
        if inp is not None and Path(inp).exists() and out.exists() and out.resolve() == Path(inp).resolve():
            raise UserError(f"{out}: output path is the input model; refusing to overwrite it")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"{out}: output folder is not writable")
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the target folder, then rename: no partial file ever."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".onnxprune-", suffix=".tmp", dir=path.parent or ".")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(model: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> None:
    """Save atomically; large models (or `external_data=True`) keep weights in `<name>.data` beside."""
    path = Path(path)
    big = too_big(model) if external_data is None else external_data
    if not big:
        atomic_write_bytes(path, model.SerializeToString())
        return
    data_name = path.name + ".data"
    with tempfile.TemporaryDirectory(dir=path.parent or ".", prefix=".onnxprune-") as tmpdir:
        tmp_model, tmp_data = Path(tmpdir) / path.name, Path(tmpdir) / data_name
        stub = structure(model)  # the weights go to the data file, not into a copy of the model
        with open(tmp_data, "wb") as f:
            for t in model.graph.initializer:
                if not t.HasField("raw_data") or not t.raw_data:
                    stub.graph.initializer.append(t)
                    continue
                if len(t.raw_data) >= 1 << 20:
                    f.write(b"\0" * (-f.tell() % 4096))  # large tensors page-aligned, for memory mapping
                ref = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, doc_string=t.doc_string,
                                       raw_data=b"")
                external_data_helper.set_external_data(ref, data_name, offset=f.tell(), length=len(t.raw_data))
                ref.ClearField("raw_data")
                ref.data_location = onnx.TensorProto.EXTERNAL
                f.write(t.raw_data)
                stub.graph.initializer.append(ref)
        tmp_model.write_bytes(stub.SerializeToString())
        os.replace(tmp_data, path.parent / data_name)
        os.replace(tmp_model, path)
