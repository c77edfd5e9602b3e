"""onnxprune: structured channel pruning of exported ONNX models.

The package is one subpackage per pipeline stage, each importing only from the stages below it:
graph → analysis (→ twin, rewrite) → calibration → statistics → selection → pipeline → report, with the
API (`api`), `finetune` and the command line (`cli`) on top. docs/DESIGN.md walks through it.
Importing `onnxprune` does not import torch; pruning with calibration data does.
"""
from importlib.metadata import PackageNotFoundError, version

from .analysis import Analysis
from .api import analyze, apply_selection, masked_reference, prune
from .errors import UserError
from .graph import load_model, save_model
from .options import OptionError
from .report import Report
from .selection import Selection

try:
    __version__ = version("onnxprune")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["Analysis", "OptionError", "Report", "Selection", "UserError", "analyze", "apply_selection",
           "load_model", "masked_reference", "prune", "save_model"]
