"""Export a torch module to ONNX with one of the exporters users run, quietly.

Exporter names: `ts<opset>` is the TorchScript exporter at that opset (dynamo=False); `dynamo18` is the
dynamo exporter at opset 18 with weights in external data beside the file. The batch axis is dynamic.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import pathlib
import shutil
import tempfile
import warnings

import onnx
import torch
from torch import nn


def export(model: nn.Module, exporter: str, x: torch.Tensor, path: pathlib.Path,
           outputs: tuple = ("output",)) -> None:
    kw = dict(input_names=["input"], output_names=list(outputs))
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)  # silences "torchvision is not installed" chatter of the dynamo exporter
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter.startswith("ts"):
                axes = {n: {0: "batch"} for n in ("input", *outputs)}
                torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=int(exporter[2:]),
                                  dynamic_axes=axes, **kw)
            elif exporter == "dynamo18":
                prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=18, external_data=True,
                                         dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), **kw)
                prog.save(str(path), external_data=True)
            else:
                raise ValueError(f"unknown exporter {exporter!r}")
    finally:
        log.setLevel(level)


def export_cached(make_model, exporter: str, x: torch.Tensor, path: pathlib.Path,
                  outputs: tuple = ("output",)) -> str | None:
    """Export `make_model()` unless `path` (or its `.failed` record) exists; returns the failure text,
    or None. The model is only built when an export is needed.

    A failed export is recorded in `<stem>.failed` beside it, so a zoo keeps going and reports it."""
    failed = path.with_suffix(".failed")
    if not path.exists() and not failed.exists():
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
            staged = pathlib.Path(tmp) / path.name  # an interrupted export leaves nothing at `path`
            try:
                export(make_model(), exporter, x, staged, outputs)
            except Exception as e:  # record, don't break the zoo
                failed.write_text(f"{type(e).__name__}: {str(e)[:2000]}")
            else:
                data = pathlib.Path(str(staged) + ".data")
                if data.exists():  # the weights first: the model is what marks the export as done
                    os.replace(data, str(path) + ".data")
                os.replace(staged, path)
    return failed.read_text() if failed.exists() else None


def keyed_cache_dir(prefix: str, sources: tuple[pathlib.Path, ...]) -> pathlib.Path:
    """`models/cache/<prefix>-<key>`, the key a hash of `sources` (the files a zoo's exports depend on, this one
    included) and the torch and onnx versions: exports are reused by later runs until one of them changes;
    older keys of the same prefix are removed when a new one is made."""
    h = hashlib.sha256()
    for source in (*sources, pathlib.Path(__file__)):
        h.update(pathlib.Path(source).read_bytes())
    h.update(f"torch {torch.__version__} onnx {onnx.__version__}".encode())
    parent = pathlib.Path(__file__).resolve().parent / "cache"
    here = parent / f"{prefix}-{h.hexdigest()[:16]}"
    if not here.exists() and parent.exists():
        for old in parent.glob(f"{prefix}-*"):
            shutil.rmtree(old, ignore_errors=True)
    return here
