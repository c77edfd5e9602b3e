"""The torch twin: the normalised ONNX graph as a differentiable torch module with per-channel gates,
used by global imitation (`selection/`) and `finetune`. Ops live in `twin/ops/`, one module per op
family as in `analysis/handlers/`. See docs/DESIGN.md, "The torch twin"."""
from .interpreter import Twin
from .ops import supported_ops

__all__ = ["Twin", "supported_ops"]
