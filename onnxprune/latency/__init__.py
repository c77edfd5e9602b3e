"""Stage 7 (beside selection), latency: measured latency on an ONNX Runtime execution provider, per-group
latency tables, the latency cost model, fast widths and the measured checks of a pruned model. See
docs/DESIGN.md, "Latency"."""
from .model import LatencyModel
from .runtime import FakeTimer, OrtTimer, Runtime, Timer, default_timer, feeds, time_interleaved
from .table import LatencyTable, build_table

__all__ = ["FakeTimer", "LatencyModel", "LatencyTable", "OrtTimer", "Runtime", "Timer", "build_table",
           "default_timer", "feeds", "time_interleaved"]
