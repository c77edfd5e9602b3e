"""The pipeline stage: the sequential pruner that visits groups in topological order, collects each
group's statistics on the network pruned so far, asks the selection method for candidates, re-fits
them, and applies the decision; plus the budget (counts per group) of a calibrated run. See
docs/DESIGN.md, "The sequential pass"."""
from .budget import counts
from .pruner import GreedyPruner, GroupResult

__all__ = ["GreedyPruner", "GroupResult", "counts"]
