"""Data-free selection: `magnitude` (L1/L2 norm of each channel's consumer input slices) and `random`,
plus the helpers every method's selection goes through: the k best channels within block quotas
(`top_k`) and at least one channel in every consumer input, Split piece or Slice (`ensure_segments`)."""
from __future__ import annotations

import numpy as np

from ..analysis import Analysis, Group
from ..options import OptionError
from .selection import Selection


def magnitude_scores(analysis: Analysis, norm: str) -> dict[int, float]:
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


def top_k(group: Group, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best channels, with each block's quota (grouped conv, split pieces)."""
    if group.n_blocks == 1:
        return np.sort(np.argsort(-scores, kind="stable")[:k])
    out = []
    for b, q in enumerate(group.quotas(k)):
        members = np.flatnonzero(group.blocks == b)
        out.append(members[np.argsort(-scores[members], kind="stable")[:q]])
    return np.sort(np.concatenate(out))


def ensure_segments(analysis: Analysis, group: Group, idx: np.ndarray, scores: np.ndarray) -> np.ndarray:
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


def select(analysis: Analysis, counts: dict[int, int], method: str = "magnitude", norm: str = "l1",
           seed: int = 0, random_gamma: bool = False) -> Selection:
    """Choose `counts[g]` channels of each group by `method` ('magnitude' or 'random')."""
    rng = np.random.default_rng(seed)
    scores_by_class = magnitude_scores(analysis, norm) if method == "magnitude" else {}
    sel = Selection()
    for gid, k in counts.items():
        group = analysis.groups[gid]
        if method == "magnitude":
            scores = np.array([scores_by_class.get(c, 0.0) for c in group.classes.tolist()])
        elif method == "random":
            scores = rng.random(group.channels)
        else:
            raise OptionError("method", method, "not a data-free selection method (magnitude or random)")
        idx = ensure_segments(analysis, group, top_k(group, scores, k), scores)
        sel.scores[gid] = scores
        sel.kept[gid] = idx
        sel.gamma[gid] = rng.uniform(0.5, 1.5, len(idx)) if random_gamma else np.ones(len(idx))
    return sel
