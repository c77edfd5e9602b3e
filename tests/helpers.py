"""Shared test helpers: run models in ONNX Runtime and compare outputs relative to their scale."""
import numpy as np
import onnx
import onnxruntime as ort


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def rel_err(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest |a - b| over outputs, relative to each output's scale."""
    return max(float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-6)) for x, y in zip(a, b))
