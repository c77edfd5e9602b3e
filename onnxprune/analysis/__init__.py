"""The analysis stage: the channel groups of a model, the edits the rewriter needs, and the cost model.

Op handlers (`analysis/handlers/`, one module per op family) follow channels through the graph. See
docs/DESIGN.md, "Channel groups"."""
from .analyzer import Analysis, analyze
from .records import FIXED, Cost, Edit, Group

__all__ = ["FIXED", "Analysis", "Cost", "Edit", "Group", "analyze"]
