"""The graph stage: load, check, normalise, save and run ONNX models. Knows nothing of channels.

See docs/DESIGN.md, "Where each stage lives"."""
from .load import (
    check_model,
    default_opset,
    load_model,
    path_uses_external_data,
    uses_external_data,
    with_supported_opset,
)
from .save import atomic_write_bytes, check_output_path, save_model

__all__ = ["atomic_write_bytes", "check_model", "check_output_path", "default_opset", "load_model",
           "path_uses_external_data", "save_model", "uses_external_data", "with_supported_opset"]
