"""The calibration stage: data sources that stream in batches pass after pass (files, image folders,
dicts, iterables, ORT readers), data files for `eval`, and the activation taps (ONNX Runtime sessions
whose outputs are the tensors a group needs). See docs/DESIGN.md, "Calibration"."""
from .source import Calibration, checked_batches, load_calibration

__all__ = ["Calibration", "checked_batches", "load_calibration"]
