"""`LocalProblem`: one group as the selection methods see it (`selection.methods.GroupProblem`), built by
the pipeline from the statistics collected for that group."""
from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..analysis import Group
from ..selection import greedy
from ..selection.baselines import ensure_segments, top_k
from ..statistics.collector import Collector
from ..statistics.consumer import Consumer
from .terms import omp_path, terms

if TYPE_CHECKING:
    from .pruner import GreedyPruner


class LocalProblem:
    """The group's local terms on the calibration split (G, c, rr) and on the held-out split (Gh, ch, rrh,
    or None when some consumer saw no held-out rows), for the decisions so far (`keep`, `gamma`)."""

    def __init__(self, pruner: GreedyPruner, group: Group, k: int, consumers: list[Consumer], col: Collector,
                 keep: np.ndarray, gamma: np.ndarray, constrained: bool = True):
        self.pruner, self.analysis = pruner, pruner.analysis
        self.group, self.k, self.consumers, self.keep, self.gamma = group, k, consumers, keep, gamma
        self.stats = col.stats
        self.G, self.c, self.rr = terms(self.analysis, pruner.dense, group, consumers, col.stats["calib"], keep,
                                        gamma)
        held = col.stats["holdout"]
        self.held = held if all(c.node in held for c in consumers) else None
        self.Gh: np.ndarray | None = None
        self.ch: np.ndarray | None = None
        self.rrh: float | None = None
        if self.held is not None:
            self.Gh, self.ch, self.rrh = terms(self.analysis, pruner.dense, group, consumers, held, keep, gamma)
        self.quota = group.quotas(k) if constrained and group.n_blocks > 1 else None
        self.blocks = group.blocks if self.quota is not None else None

    @cached_property
    def full(self) -> greedy.Path:
        """The unconstrained greedy-local path over all channels (computed when a method or the report
        asks for it)."""
        return greedy.greedy_local(self.G, self.c, self.rr, self.group.channels)

    @cached_property
    def curve(self) -> list[float]:
        return (self.full.losses / max(self.rr, 1e-300)).tolist()

    def omp_path(self, n: int, constrained: bool = True) -> greedy.Path | None:
        blocks, quota = (self.blocks, self.quota) if constrained else (None, None)
        return omp_path(self.analysis, self.group, self.consumers, self.stats["calib"], self.keep, n, blocks, quota)

    def baseline(self, method: str) -> np.ndarray:
        scores = self.pruner.baseline_scores(self.group, method)
        return ensure_segments(self.analysis, self.group, top_k(self.group, scores, self.k), scores)

    def profile_scores(self, method: str) -> np.ndarray:
        return self.pruner.profile_scores(self.group, method)

    def global_imitation(self):
        g = self.pruner.global_imitation()
        # the network before the group's first consumer does not depend on the group's gates
        twin, gates = g.twin_for(self.pruner.sel, start=min(c.node for c in self.consumers))
        return twin, gates, g.calib, g.options
