"""What the ImageNet MobileNetV2 benchmarks share: the model, its logits on crops, and the metrics of a
pruned model against the original (onnxprune's `output_metrics`, under the keys the results JSON uses)."""
from __future__ import annotations

import numpy as np

from bench.lib.common import make_session
from onnxprune.report.evaluate import output_metrics

CALIB_SEED, EVAL_SEED, IN_SEED = 0, 1, 7  # IN_SEED: unseen crops of the calibration photos


def model_path() -> str:
    from models.imagenet_weights import export
    return export()


def logits(model, x: np.ndarray, batch: int = 50) -> np.ndarray:
    sess = make_session(model)
    return np.concatenate([sess.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def metrics(a: np.ndarray, b: np.ndarray) -> dict:
    """Pruned logits `b` against the original's `a` (same samples)."""
    m = output_metrics(a, b)
    return {"top1_agreement": m["agreement"], "top5_overlap": m["top5_overlap"],
            "top1_in_orig_top5": m["top1_in_original_top5"], "kl": m["kl"], "eval_samples": m["samples"]}


def photo_checks(model) -> dict:
    """Top-1 class of the centre crops of chelsea and coffee (sanity, 2 images)."""
    import skimage.data

    from models.imagenet_weights import preprocess
    sess = make_session(model)
    return {n: int(sess.run(None, {"input": preprocess(getattr(skimage.data, n)())})[0][0].argmax())
            for n in ("chelsea", "coffee")}


def both(model, ev) -> dict:
    """Metrics on the evaluation photos, and (prefix in_) on unseen crops of the calibration photos."""
    (ref, x), (ref_in, x_in) = ev
    out = metrics(ref, logits(model, x))
    if x_in is not None:
        out.update({f"in_{k}": v for k, v in metrics(ref_in, logits(model, x_in)).items()})
    return out
