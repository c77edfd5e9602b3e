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


def output_metrics(a: np.ndarray, b: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """How closely outputs `b` (pruned) imitate `a` (original) on the same samples, rows = samples:
    top-1 agreement, top-5 overlap, whether b's top-1 is in a's top 5, mean KL(softmax a ‖ softmax b),
    and with `labels` both models' top-1 and top-5 accuracy."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    la, lb = _log_softmax(a), _log_softmax(b)
    k = min(5, a.shape[1])
    t5a, t5b = np.argsort(-a, 1, kind="stable")[:, :k], np.argsort(-b, 1, kind="stable")[:, :k]
    pa, pb = a.argmax(1), b.argmax(1)
    out = {"samples": int(len(a)), "agreement": float((pa == pb).mean()),
           "top5_overlap": float(np.mean([len(set(p) & set(q)) / k for p, q in zip(t5a, t5b)])),
           "top1_in_original_top5": float(np.mean([q in set(p) for p, q in zip(t5a, pb)])),
           "kl": float((np.exp(la) * (la - lb)).sum(axis=1).mean()),
           "accuracy_original": None, "accuracy_pruned": None, "top5_original": None, "top5_pruned": None}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        out.update(accuracy_original=float((pa == labels).mean()), accuracy_pruned=float((pb == labels).mean()),
                   top5_original=float(np.mean([y in set(t) for t, y in zip(t5a, labels)])),
                   top5_pruned=float(np.mean([y in set(t) for t, y in zip(t5b, labels)])))
    return out


def compare(original, pruned, data_path, batch_size: int = 256) -> dict:
    """Metrics of `pruned` against `original` on an .npz (see `calibration.datafile.load_npz`)."""
    original = original if isinstance(original, onnx.ModelProto) else load_model(original)
    pruned = pruned if isinstance(pruned, onnx.ModelProto) else load_model(pruned)
    inputs, labels = load_npz(data_path, original)
    a = logits(session(original), inputs, batch_size)
    b = logits(session(pruned), inputs, batch_size)
    return output_metrics(a, b, labels)
