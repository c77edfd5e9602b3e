"""The selection stage: which channels each group keeps and their scales γ.

`Selection` (the result), counts per group from a target (`counts`, `allocation`), the data-free
baselines (`baselines`), greedy local imitation on a group's statistics (`greedy`), global imitation
through the torch twin (`global_imitation`), and the method registry (`methods`). Importing this
package does not import torch; `greedy`, `global_imitation` and `methods` do. See docs/DESIGN.md,
"Greedy selection"."""
from .baselines import select
from .counts import counts_for_ratio, counts_for_target, fit_to_target
from .selection import Selection

__all__ = ["Selection", "counts_for_ratio", "counts_for_target", "fit_to_target", "select"]
