"""ONNX Runtime sessions for in-memory models, including those over protobuf's 2 GB limit."""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from .save import save_model
from .skeleton import too_big


def inference_session(model: onnx.ModelProto, opts, providers):
    """An ONNX Runtime session for an in-memory model; one over protobuf's 2 GB limit goes through a
    temporary file with external data (ORT reads it while the session is created)."""
    import onnxruntime as ort
    if not too_big(model):
        return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
    with tempfile.TemporaryDirectory(prefix="onnxprune-session-") as tmp:
        path = Path(tmp) / "model.onnx"
        save_model(model, path, external_data=True)
        return ort.InferenceSession(str(path), opts, providers=providers)
