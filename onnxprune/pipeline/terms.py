"""A group's local terms from its consumers' statistics: loss(S, γ) = rr − 2γᵀc_S + γᵀG_SSγ, with every
consumer's weights as the decisions so far left them (docs/DESIGN.md, "Greedy selection")."""
from __future__ import annotations

import numpy as np

from ..analysis import Analysis, Group
from ..selection import greedy
from ..statistics.consumer import Consumer, original_dense
from ..statistics.moments import Stats, conditioned, group_terms


def member(analysis: Analysis, group: Group, consumer: Consumer) -> np.ndarray:
    """The group channel index of every feature of the consumer, or -1 for features of other groups."""
    pos = {c: i for i, c in enumerate(group.classes.tolist())}
    roots = analysis.class_of
    return np.array([pos.get(c, -1) for c in roots[consumer.labels].tolist()], dtype=np.int64)


def current_weights(analysis: Analysis, dense: dict[int, np.ndarray], consumer: Consumer, keep: np.ndarray,
                    gamma: np.ndarray) -> np.ndarray:
    """W̃ = [W, b] of a consumer now: its re-fitted weights, or the original ones gated by keep·γ."""
    if consumer.node in dense:
        return dense[consumer.node]
    wt = original_dense(consumer, analysis)
    roots = analysis.class_of
    scale = np.where(keep, gamma, 0.0)[roots[consumer.labels]]
    wt[:, :-1] *= scale
    return wt


def terms(analysis: Analysis, dense: dict[int, np.ndarray], group: Group, consumers: list[Consumer],
          stats: dict[int, Stats], keep: np.ndarray, gamma: np.ndarray):
    """(G, c, rr) of the group summed over its consumers."""
    roots = analysis.class_of
    items = [(stats[c.node], current_weights(analysis, dense, c, keep, gamma), member(analysis, group, c),
              keep[roots[c.labels]]) for c in consumers]
    return group_terms(items, group.channels)


def omp_path(analysis: Analysis, group: Group, consumers: list[Consumer], stats: dict[int, Stats],
             keep: np.ndarray, n: int, blocks=None, quota=None) -> greedy.Path | None:
    """Group OMP over the consumers' statistics (inputs outside the group that are still kept stay in
    every fit), or None where a consumer's channels read unequal numbers of inputs."""
    roots = analysis.class_of
    conditioned_terms = [conditioned(stats[c.node], member(analysis, group, c), keep[roots[c.labels]])
                         for c in consumers]
    try:
        return greedy.group_omp(conditioned_terms, group.channels, n, blocks, quota)
    except ValueError:
        return None
