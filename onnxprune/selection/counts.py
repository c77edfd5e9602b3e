"""How many channels each group keeps: a uniform keep ratio, or a MACs/params fraction reached by
searching the uniform ratio (`counts_for_target`), then measured on a stand-in selection and moved
group by group to land within the tolerance (`fit_to_target`)."""
from __future__ import annotations

import numpy as np

from ..analysis import Analysis, Group
from ..analysis.cost import macs
from ..analysis.cost_model import macs_model, params_model
from ..errors import UserError
from ..options import OptionError
from .allocation import check_reachable, refine
from .selection import Selection


def _round(n: float, group: Group, round_to: int, min_channels: int) -> int:
    """Round a channel count up to a multiple of `round_to` (and of the group's block multiple)."""
    step = int(np.lcm(max(1, round_to), group.multiple))
    k = int(np.ceil(n / step - 1e-9)) * step
    if k > group.channels:  # the multiple does not fit: fall back to the block multiple
        k = int(np.ceil(n / group.multiple - 1e-9)) * group.multiple
    lo = max(min_channels, group.fewest)
    lo = int(np.ceil(lo / group.multiple)) * group.multiple
    return int(min(group.channels, max(k, lo)))


def _round_in(n: float, allowed: np.ndarray) -> int:
    """The smallest allowed count >= n (the largest allowed when none is)."""
    i = int(np.searchsorted(allowed, n - 1e-9))
    return int(allowed[min(i, len(allowed) - 1)])


def counts_for_ratio(analysis: Analysis, ratio: float, round_to: int = 1, min_channels: int = 1,
                     overrides: dict[int, int] | None = None,
                     widths: dict[int, np.ndarray] | None = None) -> dict[int, int]:
    """`ratio` of every group's channels, rounded up to `round_to` or, with `widths` (group id -> sorted
    allowed counts), to the next allowed count."""
    if widths is not None:
        counts = {g.id: _round_in(max(ratio * g.channels, 1), widths[g.id]) for g in analysis.prunable}
    else:
        counts = {g.id: _round(ratio * g.channels, g, round_to, min_channels) for g in analysis.prunable}
    for gid, n in (overrides or {}).items():
        counts[gid] = n
    return counts


def counts_for_target(analysis: Analysis, fraction: float, what: str = "flops", round_to: int = 1,
                      min_channels: int = 1, overrides: dict[int, int] | None = None,
                      tolerance: float = 0.02, widths: dict[int, np.ndarray] | None = None,
                      model=None) -> dict[int, int]:
    """Search the uniform keep ratio so the kept MACs (what='flops') or parameters (what='params'), or the
    cost of `model` (e.g. a latency model), land within `tolerance` of `fraction`, then nudge single groups
    towards the target."""
    if not 0 < fraction <= 1:
        raise OptionError(what, fraction, "must be in (0, 1]")
    if model is None:
        model = macs_model(analysis) if what == "flops" else params_model(analysis)
    if model.total <= 0:
        raise UserError("model has no MACs to reduce (no Conv, Gemm or MatMul)")
    target = fraction * model.total
    check_reachable(model, counts_for_ratio(analysis, 0.0, round_to, min_channels, overrides, widths), fraction,
                    what, tolerance)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if model(model.vector(counts_for_ratio(analysis, mid, round_to, min_channels, overrides, widths))) > target:
            hi = mid
        else:
            lo = mid
    cands = [counts_for_ratio(analysis, r, round_to, min_channels, overrides, widths) for r in (lo, hi)]
    best = min(cands, key=lambda c: abs(model(model.vector(c)) - target))
    return refine(model, best, target, round_to, min_channels, set(overrides or {}), widths)


def fit_to_target(analysis: Analysis, sel: Selection, scores: dict[int, np.ndarray], fraction: float,
                  min_channels: int = 1, tolerance: float = 0.02, round_to: int = 1,
                  widths: dict[int, np.ndarray] | None = None) -> None:
    """Counts were set from a cost model that assumes a group's channels weigh the same; tied
    channels (channel shuffle) and Split pieces that keep different shares can weigh more or less.
    Move one step (`round_to` channels, a multiple of the group's, or to the next count in `widths`) of a
    free group (best scores in, worst out) while the measured MACs are off the target by more than
    `tolerance`."""
    total = macs(analysis)
    for _ in range(64):
        keep, _ = sel.class_arrays(analysis)
        err = macs(analysis, keep) / total - fraction
        if abs(err) <= tolerance * fraction:
            return
        best = None
        for g in analysis.prunable:
            if g.id not in sel.kept or g.id not in scores or g.n_blocks > 1:
                continue
            kept = sel.kept[g.id]
            sc = scores[g.id]
            step = int(np.lcm(max(1, round_to), g.multiple))
            if widths is not None:
                near = [w for w in widths[g.id] if (w < len(kept) if err > 0 else w > len(kept))]
                if not near:
                    continue
                step = abs(len(kept) - (max(near) if err > 0 else min(near)))
            if err > 0 and len(kept) - step >= max(min_channels, 1):
                trial = np.delete(kept, np.argsort(sc[kept], kind="stable")[:step])
            elif err < 0 and len(kept) + step <= g.channels:
                out = np.setdiff1d(np.arange(g.channels), kept)
                trial = np.sort(np.append(kept, out[np.argsort(-sc[out], kind="stable")[:step]]))
            else:
                continue
            old = sel.kept[g.id], sel.gamma[g.id]
            sel.kept[g.id], sel.gamma[g.id] = trial, np.ones(len(trial))
            k2, _ = sel.class_arrays(analysis)
            e2 = abs(macs(analysis, k2) / total - fraction)
            sel.kept[g.id], sel.gamma[g.id] = old
            if e2 < abs(err) and (best is None or e2 < best[0]):
                best = (e2, g.id, trial)
        if best is None:
            return
        sel.kept[best[1]] = best[2]
        sel.gamma[best[1]] = np.ones(len(best[2]))
