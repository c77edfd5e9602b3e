"""Shared test helpers: run models in ONNX Runtime and compare outputs relative to their scale."""
import numpy as np
import onnx
import onnxruntime as ort


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def load_in_ort(path) -> ort.InferenceSession:
    """An ONNX Runtime session made from the file on disk, as a user would load it: ORT reads the model and
    its external data itself (an in-memory session would not see tensors that only load from the file)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_file(path, feeds: dict) -> list[np.ndarray]:
    """Outputs of the model file at `path` run by ONNX Runtime from disk (see `load_in_ort`)."""
    return load_in_ort(path).run(None, feeds)


def rel_err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest |a - b| over outputs, relative to each output's scale."""
    return max(float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-6)) for x, y in zip(a, b))


def oracle_error(analysis, feeds, seeds=(0, 1), ratios=(0.3, 0.6)) -> float:
    """Largest pruned-vs-masked-reference error over random selections with random γ, at batch 1 and 3
    (`feeds(batch, seed)` makes the inputs); every pruned graph also passes the full checker."""
    from onnxprune.rewrite import Rewriter
    from onnxprune.selection import counts_for_ratio, select
    worst = 0.0
    for seed in seeds:
        for ratio in ratios:
            keep, gamma = select(analysis, counts_for_ratio(analysis, ratio), "random", seed=seed,
                                 random_gamma=True).class_arrays(analysis)
            pruned = Rewriter(analysis, keep, gamma).run()
            masked = Rewriter(analysis, keep, gamma, masked=True).run()
            onnx.checker.check_model(pruned, full_check=True)
            for batch in (1, 3):
                x = feeds(batch, seed)
                worst = max(worst, rel_err(run(pruned, x), run(masked, x)))
    return worst
