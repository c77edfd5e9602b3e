"""Compare two models on data: top-1 agreement, mean KL(original || pruned), accuracies."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ..calibration.datafile import batches, load_npz
from ..graph.load import load_model
from ..graph.session import inference_session


def session(model: onnx.ModelProto | str, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if isinstance(model, onnx.ModelProto):
        return inference_session(model, opts, ["CPUExecutionProvider"])
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def logits(sess: ort.InferenceSession, inputs: dict, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([sess.run(None, b)[0] for b in batches(inputs, batch_size)])


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def compare(original, pruned, data_path, batch_size: int = 256) -> dict:
    """Metrics of `pruned` against `original` on an .npz (see `data.load_npz`)."""
    original = original if isinstance(original, onnx.ModelProto) else load_model(original)
    pruned = pruned if isinstance(pruned, onnx.ModelProto) else load_model(pruned)
    orig_model = original
    inputs, labels = load_npz(data_path, orig_model)
    a = logits(session(original), inputs, batch_size)
    b = logits(session(pruned), inputs, batch_size)
    la, lb = _log_softmax(a.reshape(len(a), -1)), _log_softmax(b.reshape(len(b), -1))
    kl = float((np.exp(la) * (la - lb)).sum(axis=1).mean())
    pa, pb = a.reshape(len(a), -1).argmax(1), b.reshape(len(b), -1).argmax(1)
    out = {"agreement": float((pa == pb).mean()), "kl": kl, "accuracy_original": None, "accuracy_pruned": None,
           "samples": int(len(a))}
    if labels is not None:
        out["accuracy_original"] = float((pa == labels).mean())
        out["accuracy_pruned"] = float((pb == labels).mean())
    return out
