"""A selection: which channels each group keeps, and their scales γ.

A `Selection` maps group id -> (kept channel indices, γ per kept channel), plus the re-fitted consumer
weights that replace the original ones. `class_arrays` turns it into the per-class keep mask and γ that
the rewriter and the cost model read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..analysis import Analysis


@dataclass
class Selection:
    kept: dict[int, np.ndarray] = field(default_factory=dict)
    gamma: dict[int, np.ndarray] = field(default_factory=dict)
    replace: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # node -> input -> re-fitted value
    scores: dict[int, np.ndarray] = field(default_factory=dict, repr=False)   # criterion per channel, if any

    def class_arrays(self, analysis: Analysis) -> tuple[np.ndarray, np.ndarray]:
        """Per-class keep mask and γ, for the rewriter and the cost model."""
        n = len(analysis.class_of)
        keep = np.ones(n, dtype=bool)
        gamma = np.ones(n, dtype=np.float64)
        for gid, idx in self.kept.items():
            classes = analysis.groups[gid].classes
            keep[classes] = False
            keep[classes[idx]] = True
            gamma[classes[idx]] = self.gamma.get(gid, np.ones(len(idx)))
        return keep, gamma
