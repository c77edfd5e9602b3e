"""ONNX Runtime sessions for in-memory models, including those over protobuf's 2 GB limit."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import onnx

from ..errors import UserError
from .save import save_model
from .skeleton import too_big


def inference_session(model: onnx.ModelProto, opts, providers):
    """An ONNX Runtime session for an in-memory model; one over protobuf's 2 GB limit goes through a
    temporary file with external data (ORT reads it while the session is created)."""
    import onnxruntime as ort
    try:
        if not too_big(model):
            return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        with tempfile.TemporaryDirectory(prefix="onnxprune-session-") as tmp:
            path = Path(tmp) / "model.onnx"
            save_model(model, path, external_data=True)
            return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # onnxruntime's Fail / InvalidGraph / NotImplemented: the model's ops or shapes
        if isinstance(exc, UserError):
            raise
        raise UserError(f"ONNX Runtime cannot load the model: {runtime_message(exc)}") from None


# ONNX Runtime's words for an op it has no schema or kernel for (a custom op): such a model is pruned all the
# same, its unknown ops frozen, and runs where the op is registered
_UNKNOWN_OP = ("is not a registered function/op", "No Op registered for", "Could not find an implementation for")


def check_loads(model: onnx.ModelProto | str | os.PathLike, name: str) -> None:
    """Refuse a model ONNX Runtime cannot load for another reason than an op it does not know (an attribute value
    out of its range, say, which the ONNX checker lets through): pruning keeps the reason, so the pruned model
    would not load either. A model with a custom op passes. A path is loaded by ORT from the file itself (no copy
    of a model over 2 GB into a temporary file)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 4   # the refusal below says it once; ORT's own log line would repeat it
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        if isinstance(model, onnx.ModelProto):
            inference_session(model, opts, ["CPUExecutionProvider"])
        else:
            ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = str(exc) if isinstance(exc, UserError) else \
            f"ONNX Runtime cannot load the model: {runtime_message(exc)}"
        if not any(s in text for s in _UNKNOWN_OP):
            raise UserError(f"{name}: {text}") from None


def runtime_message(exc: BaseException) -> str:
    """ONNX Runtime's error in one line: `[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code
    returned while running Reshape node. Name:'r' Status Message: ...` becomes `Reshape node 'r': ...`."""
    text = " ".join(str(exc).split())
    m = re.search(r"running (\S+) node\. Name:'([^']*)' Status Message: (.*)", text)
    if m:
        # drop the source location and the failed check: "/onnxruntime_src/...h:84 onnxruntime::F(...) x was false."
        detail = re.sub(r"^/\S+:\d+ .*? was false\. ", "", m.group(3))
        detail = re.sub(r"^/\S+:\d+ ", "", detail)
        return f"{m.group(1)} node '{m.group(2)}': {detail}"
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/onnxruntime_src/\S+:\d+ .*? was false\. ", "", text)   # the failed check's source
    return text or type(exc).__name__
