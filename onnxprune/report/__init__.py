"""The report stage: the record of a run (what was kept, what it cost, what was frozen and why),
its HTML page, and the comparison of two models on data (`eval`). See docs/DESIGN.md, "The report"."""
from .record import GroupReport, Report, build_report

__all__ = ["GroupReport", "Report", "build_report"]
