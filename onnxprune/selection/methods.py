"""Selection methods as registered classes: one class per `--method` name.

A method declares what it needs (calibration data, the torch twin) and turns one group's problem into
candidate selections. The pipeline (`pipeline/pruner.py`) builds the problem (`GroupProblem`: the
group's local statistics, its block quotas, the twin for global imitation), asks the method for its
candidates, completes them to the exact count, re-fits them, and keeps the candidate with the lowest
held-out output loss when there are several (`greedy-combined`). The allocation's loss curves follow
each method's own channel order (`profile_order`).

To add a method: subclass `Method`, set `name`, implement `candidates`, decorate with `@register`.
The command line's `--method` choices, the API's validation and the report's method names all come from
this registry. See docs/DESIGN.md, "Adding a method".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from ..analysis import Group
from ..options import OptionError
from . import greedy
from .global_imitation import exact_select, taylor_importance, taylor_select


@dataclass
class Candidate:
    """One selection a method proposes for a group (before completion to the exact count and re-fit)."""
    method: str
    kept: np.ndarray
    gamma: np.ndarray
    curve: list[float]
    note: str = ""


class GroupProblem(Protocol):
    """What a method sees of one group: the local terms loss(S, γ) = rr − 2γᵀc_S + γᵀG_SSγ on the
    calibration split, the kept count `k` and the block quotas, and access to the rest of the pipeline."""
    group: Group
    k: int
    G: np.ndarray
    c: np.ndarray
    rr: float
    quota: np.ndarray | None      # kept channels per block, or None when the group has one block
    blocks: np.ndarray | None     # block of every channel, or None

    @property
    def full(self) -> greedy.Path:
        """The unconstrained greedy-local path over all channels."""

    @property
    def curve(self) -> list[float]:
        """The relative loss of `full` at every kept count (the report's curve)."""

    def omp_path(self, n: int, constrained: bool = True) -> greedy.Path | None:
        """Group OMP over the consumers' statistics, or None where channels read unequal input counts."""

    def baseline(self, method: str) -> np.ndarray:
        """The channels a data-free criterion ('magnitude' or 'random') keeps."""

    def profile_scores(self, method: str) -> np.ndarray:
        """Per-channel scores of a data-free criterion, for the allocation's channel order."""

    def global_imitation(self):
        """(twin, gates of the selection so far, output loss on the calibration subset, GlobalOptions)."""


class Method:
    """A way of choosing a group's channels."""
    name: ClassVar[str]
    needs_calibration: ClassVar[bool] = True   # False: can prune without data (with --refit none)
    needs_twin: ClassVar[bool] = False          # uses the torch twin (global imitation)

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        raise NotImplementedError

    def profile_order(self, p: GroupProblem) -> tuple[list[int], np.ndarray | None]:
        """The order in which this method adds channels on the original network (for the allocation's
        loss curves), and the least-squares-γ losses along it where they come for free."""
        return p.full.order, p.full.losses

    def label(self, winner: str) -> str:
        """The method name the report gives a group whose candidate `winner` was kept."""
        return winner

    @property
    def fallback(self) -> str:
        """The data-free method used for a group without statistics."""
        return self.name if not self.needs_calibration else "magnitude"


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY:
        raise ValueError(f"method '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        raise OptionError("method", name, f"unknown (choose from {', '.join(_REGISTRY)})")
    return _REGISTRY[name]()


def _sorted(order) -> np.ndarray:
    return np.array(sorted(order), dtype=np.int64)


# ------------------------------------------------------------------------------ local imitation
class _HullMethod(Method):
    """Selection on the local statistics by one of `greedy`'s paths."""
    path = staticmethod(greedy.greedy_local)

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        # an unconstrained greedy-local path to k is the first k steps of the whole curve's path
        path = p.full if self.name == "greedy-local" and p.quota is None \
            else type(self).path(p.G, p.c, p.rr, p.k, p.blocks, p.quota)
        idx = _sorted(path.order[:p.k])
        gam = greedy.ls_gamma(p.G, p.c, idx) if path.gamma is None else path.gamma[idx]
        return [Candidate(self.name, idx, gam, p.curve)]


@register
class GreedyLocal(_HullMethod):
    """Forward selection with a least-squares γ after every pick (the default)."""
    name = "greedy-local"


@register
class GreedyConvex(_HullMethod):
    """The paper's convex-hull step with an exact line search."""
    name = "greedy-convex"
    path = staticmethod(greedy.greedy_convex)


@register
class GFS(_HullMethod):
    """Greedy forward selection with the fixed step 1/t (Ye et al., ICML 2020)."""
    name = "gfs"
    path = staticmethod(greedy.gfs)


@register
class GreedyOMP(Method):
    """Selection by the residual after a full re-fit of the consumers (group orthogonal matching pursuit)."""
    name = "greedy-omp"

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        path = p.omp_path(p.k)
        name, note = self.name, ""
        if path is None:
            path = p.full if p.quota is None else greedy.greedy_local(p.G, p.c, p.rr, p.k, p.blocks, p.quota)
            name, note = "greedy-local", "greedy-local: channels read unequal numbers of consumer inputs"
        idx = _sorted(path.order[:p.k])
        return [Candidate(name, idx, greedy.ls_gamma(p.G, p.c, idx), p.curve, note)]

    def profile_order(self, p: GroupProblem) -> tuple[list[int], np.ndarray | None]:
        omp = p.omp_path(p.group.channels, constrained=False)
        return (omp.order, None) if omp is not None else super().profile_order(p)


# ----------------------------------------------------------------------------- global imitation
@register
class GreedyTaylor(Method):
    """Forward selection by gate gradients of the output loss, a few rounds per group."""
    name = "greedy-taylor"
    needs_twin = True

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        twin, gates, loss, opts = p.global_imitation()
        chosen, passes = taylor_select(twin, loss, gates, p.group.classes, p.k, p.quota, p.blocks,
                                       opts.taylor_rounds)
        idx = np.array(chosen, dtype=np.int64)
        return [Candidate(self.name, idx, greedy.ls_gamma(p.G, p.c, idx), p.curve,
                          f"Taylor, {passes} backward passes")]


@register
class GreedyGlobal(GreedyTaylor):
    """Forward selection by the exact output loss of every candidate; Taylor scores above `exact_limit`."""
    name = "greedy-global"

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        twin, gates, loss, opts = p.global_imitation()
        if p.group.channels > opts.exact_limit:
            return super().candidates(p)
        idx = np.array(exact_select(twin, loss, gates, p.group.classes, p.k, p.quota, p.blocks), dtype=np.int64)
        return [Candidate(self.name, idx, greedy.ls_gamma(p.G, p.c, idx), p.curve, "exact")]


class Composite(Method):
    """The candidates of several registered methods; the pipeline keeps the lowest held-out output loss."""
    parts: ClassVar[tuple[str, ...]]
    needs_twin = True  # the candidates are compared by their output loss

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        return [cand for part in self.parts for cand in get_method(part).candidates(p)]

    def profile_order(self, p: GroupProblem) -> tuple[list[int], np.ndarray | None]:
        return get_method(self.parts[0]).profile_order(p)

    def label(self, winner: str) -> str:
        return f"combined:{winner}"


@register
class GreedyCombined(Composite):
    """Per group, local (greedy-local) or global (greedy-taylor) imitation: the paper's best setting."""
    name = "greedy-combined"
    parts = ("greedy-local", "greedy-taylor")


@register
class Taylor(Method):
    """First-order Taylor importance of the task loss (Molchanov et al., 2017), no re-weighting."""
    name = "taylor"
    needs_twin = True

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        from .baselines import top_k
        twin, gates, loss, _ = p.global_imitation()
        idx = top_k(p.group, taylor_importance(twin, loss, gates, p.group.classes), p.k)
        return [Candidate(self.name, idx, np.ones(len(idx)), [])]


# ------------------------------------------------------------------------------------ baselines
class _Baseline(Method):
    needs_calibration = False

    def candidates(self, p: GroupProblem) -> list[Candidate]:
        idx = p.baseline(self.name)
        return [Candidate(self.name, idx, np.ones(len(idx)), p.curve)]

    def profile_order(self, p: GroupProblem) -> tuple[list[int], np.ndarray | None]:
        return np.argsort(-p.profile_scores(self.name), kind="stable").tolist(), None


@register
class Magnitude(_Baseline):
    """L1/L2 norm of each channel's consumer input slices."""
    name = "magnitude"


@register
class Random(_Baseline):
    """Uniformly random channels (a control)."""
    name = "random"
