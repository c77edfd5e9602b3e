"""Compare two models on data: top-1 agreement, mean KL(original || pruned), accuracies."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort

from ..calibration import checked_batches
from ..calibration.datafile import batches, open_data
from ..errors import UserError
from ..graph.inputs import model_inputs
from ..graph.load import load_model
from ..graph.session import inference_session, runtime_message
from ..options import EvalOptions


def session(model: onnx.ModelProto | str, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # errors come back as exceptions, reported in one line
    if threads:
        opts.intra_op_num_threads = threads
    if isinstance(model, onnx.ModelProto):
        return inference_session(model, opts, ["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise UserError(f"{model}: ONNX Runtime cannot load it: {runtime_message(exc)}") from None


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


def compare(original, pruned, data_path, batch_size: int = EvalOptions.batch_size) -> dict:
    """Metrics of `pruned` against `original` on an .npz (see `calibration.datafile.open_data`), streamed in
    batches: the data set is never held whole, only the two models' first outputs are."""
    batch_size = EvalOptions(batch_size).batch_size
    names = (_shown(original, "ORIGINAL"), _shown(pruned, "PRUNED"))
    original = original if isinstance(original, onnx.ModelProto) else load_model(original)
    pruned = pruned if isinstance(pruned, onnx.ModelProto) else load_model(pruned)
    _same_inputs(original, pruned, *names)
    data, labels = open_data(data_path, original)
    outs = []
    # one pass over the data per model: sessions run one after the other (interleaved, each one's idle
    # intra-op threads spin against the other's work: 1.5x slower on 2 cores)
    for i, (model, name) in enumerate(zip((original, pruned), names)):
        sess = session(model)
        rows = []
        for _, batch in (checked_batches(data, batch_size) if i == 0 else data.batches(batch_size)):
            got = run_first_output(sess, batch, name, data.what)
            if got.ndim == 0 or len(got) != len(next(iter(batch.values()))):
                raise UserError(f"{name}: its first output has shape {got.shape}, not one row per sample")
            rows.append(got)
        outs.append(np.concatenate(rows))
        del sess
    if outs[0].shape != outs[1].shape:
        raise UserError(f"the models' first outputs differ in shape: {names[0]} gives {outs[0].shape[1:]} per "
                        f"sample, {names[1]} {outs[1].shape[1:]}")
    return output_metrics(outs[0], outs[1], labels)


def _shown(model, default: str) -> str:
    return str(model) if isinstance(model, (str, os.PathLike)) else default


def _same_inputs(a: onnx.ModelProto, b: onnx.ModelProto, name_a: str, name_b: str) -> None:
    ia, ib = model_inputs(a), model_inputs(b)
    if set(ia) != set(ib):
        raise UserError(f"{name_b}: its inputs {sorted(ib)} are not those of {name_a} {sorted(ia)}")
    for k in ia:
        if ia[k][0] != ib[k][0]:
            raise UserError(f"{name_b}: input '{k}' has dtype {np.dtype(ib[k][0])}, in {name_a} "
                            f"{np.dtype(ia[k][0])}")


def run_first_output(sess: ort.InferenceSession, batch: dict, name: str, data: str) -> np.ndarray:
    """The first output of one batch; a run-time failure of the model is a user error naming the node."""
    try:
        return np.asarray(sess.run(None, batch)[0])
    except Exception as exc:  # onnxruntime's Fail / InvalidArgument / RuntimeException
        raise UserError(f"{name}: running it on {data} failed: {runtime_message(exc)}") from None
