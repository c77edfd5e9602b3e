"""Which channels each group keeps, and their scales γ.

A `Selection` maps group id -> (kept channel indices, γ per kept channel). Channel counts come from a
target (`counts_for_ratio`, `counts_for_target`); the choice within a group comes from a criterion:
`magnitude` (L1/L2 norm of each channel's consumer input slices) or `random`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .analysis import Analysis, Group
from .errors import UserError


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


def _round(n: float, group: Group, round_to: int, min_channels: int) -> int:
    """Round a channel count up to a multiple of `round_to` (and of the group's block multiple)."""
    step = int(np.lcm(max(1, round_to), group.multiple))
    k = int(np.ceil(n / step - 1e-9)) * step
    if k > group.channels:  # the multiple does not fit: fall back to the block multiple
        k = int(np.ceil(n / group.multiple - 1e-9)) * group.multiple
    lo = max(min_channels, group.fewest)
    lo = int(np.ceil(lo / group.multiple)) * group.multiple
    return int(min(group.channels, max(k, lo)))


def counts_for_ratio(analysis: Analysis, ratio: float, round_to: int = 1, min_channels: int = 1,
                     overrides: dict[int, int] | None = None) -> dict[int, int]:
    counts = {g.id: _round(ratio * g.channels, g, round_to, min_channels) for g in analysis.prunable}
    for gid, n in (overrides or {}).items():
        counts[gid] = n
    return counts


def counts_for_target(analysis: Analysis, fraction: float, what: str = "flops", round_to: int = 1,
                      min_channels: int = 1, overrides: dict[int, int] | None = None,
                      tolerance: float = 0.02) -> dict[int, int]:
    """Search the uniform keep ratio so the kept MACs (what='flops') or parameters (what='params')
    land within `tolerance` of `fraction`, then nudge single groups towards the target."""
    from .allocation import check_reachable, macs_model, params_model, refine
    if not 0 < fraction <= 1:
        raise UserError(f"--{what} {fraction}: must be in (0, 1]")
    model = macs_model(analysis) if what == "flops" else params_model(analysis)
    if model.total <= 0:
        raise UserError("model has no MACs to reduce (no Conv, Gemm or MatMul)")
    target = fraction * model.total
    check_reachable(model, counts_for_ratio(analysis, 0.0, round_to, min_channels, overrides), fraction, what,
                    tolerance)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if model(model.vector(counts_for_ratio(analysis, mid, round_to, min_channels, overrides))) > target:
            hi = mid
        else:
            lo = mid
    cands = [counts_for_ratio(analysis, r, round_to, min_channels, overrides) for r in (lo, hi)]
    best = min(cands, key=lambda c: abs(model(model.vector(c)) - target))
    return refine(model, best, target, round_to, min_channels, set(overrides or {}))


def _scores_magnitude(analysis: Analysis, norm: str) -> dict[int, float]:
    """Sum over consumers of each channel class's input-slice norm."""
    scores: dict[int, float] = {}
    roots = analysis.class_of
    nodes = analysis.graph.nodes
    for e in analysis.edits:
        if e.kind not in ("consumer", "grouped_consumer"):
            continue
        w = np.asarray(nodes[e.node].inputs[e.input].values, dtype=np.float64)
        if e.kind == "grouped_consumer":
            per = _grouped_slices(w, e.groups)
        else:
            per = np.moveaxis(w, e.axis, 0).reshape(w.shape[e.axis], -1)
        vals = np.abs(per).sum(1) if norm == "l1" else np.sqrt((per ** 2).sum(1))
        for c, v in zip(roots[e.labels].tolist(), vals.tolist()):
            scores[c] = scores.get(c, 0.0) + v
    return scores


def _grouped_slices(w: np.ndarray, groups: int) -> np.ndarray:
    """Rows = input channels of a grouped Conv, columns = the weights reading that channel."""
    cin_g, out_per = w.shape[1], w.shape[0] // groups
    rows = []
    for q in range(groups):
        wq = w[q * out_per:(q + 1) * out_per]
        rows.append(np.moveaxis(wq, 1, 0).reshape(cin_g, -1))
    return np.concatenate(rows, axis=0)


def _top_k(group: Group, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best channels, with each block's quota (grouped conv, split pieces)."""
    if group.n_blocks == 1:
        return np.sort(np.argsort(-scores, kind="stable")[:k])
    out = []
    for b, q in enumerate(group.quotas(k)):
        members = np.flatnonzero(group.blocks == b)
        out.append(members[np.argsort(-scores[members], kind="stable")[:q]])
    return np.sort(np.concatenate(out))


def _ensure_segments(analysis: Analysis, group: Group, idx: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Every consumer input, Split piece or Slice keeps at least one channel of its part of the group
    (a zero-channel tensor is not a valid graph); grouped-Conv blocks stay equal."""
    pos = {c: i for i, c in enumerate(group.classes.tolist())}
    kept = set(idx.tolist())
    roots = analysis.class_of
    for seg in analysis.segments:
        classes = roots[seg].tolist()
        if 0 in classes:
            continue  # holds a channel that never goes
        members = [pos[c] for c in classes if c in pos]
        if members and not kept.intersection(members):
            kept.add(max(members, key=lambda i: scores[i]))
    if group.n_blocks > 1 and not group.proportional:
        counts = np.bincount(group.blocks[list(kept)], minlength=group.n_blocks)
        for b in range(group.n_blocks):  # raise every block to the fullest one
            spare = sorted((i for i in np.flatnonzero(group.blocks == b) if i not in kept), key=lambda i: -scores[i])
            kept.update(spare[:counts.max() - counts[b]])
    return np.array(sorted(kept), dtype=np.int64)


def fit_to_target(analysis: Analysis, sel: Selection, scores: dict[int, np.ndarray], fraction: float,
                  min_channels: int = 1, tolerance: float = 0.02, round_to: int = 1) -> None:
    """Counts were set from a cost model that assumes a group's channels weigh the same; tied
    channels (channel shuffle) and Split pieces that keep different shares can weigh more or less.
    Move one step (`round_to` channels, a multiple of the group's) of a free group (best scores in,
    worst out) while the measured MACs are off the target by more than `tolerance`."""
    from .cost import macs
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


def select(analysis: Analysis, counts: dict[int, int], method: str = "magnitude", norm: str = "l1",
           seed: int = 0, random_gamma: bool = False) -> Selection:
    """Choose `counts[g]` channels of each group by `method` ('magnitude' or 'random')."""
    rng = np.random.default_rng(seed)
    scores_by_class = _scores_magnitude(analysis, norm) if method == "magnitude" else {}
    sel = Selection()
    for gid, k in counts.items():
        group = analysis.groups[gid]
        if method == "magnitude":
            scores = np.array([scores_by_class.get(c, 0.0) for c in group.classes.tolist()])
        elif method == "random":
            scores = rng.random(group.channels)
        else:
            raise UserError(f"--method {method}: unknown selection method")
        idx = _ensure_segments(analysis, group, _top_k(group, scores, k), scores)
        sel.scores[gid] = scores
        sel.kept[gid] = idx
        sel.gamma[gid] = rng.uniform(0.5, 1.5, len(idx)) if random_gamma else np.ones(len(idx))
    return sel
