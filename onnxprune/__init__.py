"""onnxprune: structured channel pruning of exported ONNX models."""
from .analysis import Analysis
from .api import analyze, apply_selection, masked_reference, prune
from .errors import UserError
from .modelio import load_model, save_model
from .report import Report
from .selection import Selection

__all__ = ["Analysis", "Report", "Selection", "UserError", "analyze", "apply_selection", "load_model",
           "masked_reference", "prune", "save_model"]
__version__ = "0.1.0"
