"""Fast widths: per group, the rounding of its kept count that measures fastest (`--round-to auto`), and
the allowed counts that follow from it (docs/DESIGN.md, "Latency").

For a kept count k (half the width for a group that keeps all) the probe times the group's cut at k
rounded up to every rounding in `ROUNDINGS` (k itself, the next multiple of 2, 4, ..., 64) and at full
width (and at the next smaller count, as evidence), interleaved; the width that measures fastest wins (on
equal times, the smaller). Of the roundings that give it, the coarsest is kept when a smaller width
measured no faster (alignment matters: the allocation must keep to its multiples), the finest otherwise. A
group whose fastest candidate is not faster than its full width does not pay for its pruning and keeps its
full width.
"""
from __future__ import annotations

import numpy as np

from ..analysis import Analysis, Group

ROUNDINGS = (1, 2, 4, 8, 16, 32, 64)


def _lowest(group: Group, min_channels: int) -> int:
    lo = int(np.ceil(max(min_channels, group.fewest) / group.multiple)) * group.multiple
    return min(lo, group.channels)


def multiples(group: Group, rounding: int, min_channels: int = 1) -> np.ndarray:
    """The counts a group may keep with a rounding: multiples of it (and of the group's block multiple)
    from the lowest allowed count, and the full width."""
    step = int(np.lcm(max(1, rounding), group.multiple))
    lo = _lowest(group, min_channels)
    first = int(np.ceil(lo / step)) * step
    return np.array(sorted(set(range(first, group.channels + 1, step)) | {group.channels}), dtype=np.int64)


def rounded(group: Group, k: int, rounding: int) -> int:
    """k rounded up to the rounding (and the block multiple), at most the full width."""
    step = int(np.lcm(max(1, rounding), group.multiple))
    return int(min(group.channels, int(np.ceil(k / step)) * step))


def near(group: Group, k: int) -> int:
    """The count a group's roundings are probed at: its kept count, or half its width when it keeps all
    (the allocation may still move it)."""
    return int(k) if k < group.channels else max(1, group.channels // 2)


def _below(group: Group, k: int) -> int | None:
    """The next smaller count the group can keep than its count k (rounded): evidence, not a candidate."""
    w = rounded(group, k, 1) - group.multiple
    return w if w >= group.fewest else None


def probe_widths(analysis: Analysis, counts: dict[int, int]) -> dict[int, list[int]]:
    """Per group: its kept count (`near`) rounded up to every rounding, the next smaller count, and the full
    width."""
    out = {}
    for gid, k in counts.items():
        g = analysis.groups[gid]
        if g.channels > g.fewest:
            b = _below(g, near(g, k))
            out[gid] = sorted({rounded(g, near(g, k), r) for r in ROUNDINGS} | {g.channels} | ({b} if b else set()))
    return out


def choose(analysis: Analysis, counts: dict[int, int], times: dict[int, dict[int, float]],
           min_channels: int = 1) -> tuple[dict[int, np.ndarray], dict[int, dict]]:
    """From probe times (`times[g][w]` ms) near each group's kept count: the allowed counts per group and
    the record of the choice. Groups without times (not probed, or not measurable) keep their full width."""
    widths, record = {}, {}
    for gid, k in counts.items():
        g = analysis.groups[gid]
        t = times.get(gid)
        if not t:
            widths[gid] = np.array([g.channels], dtype=np.int64)
            continue
        cands = {r: rounded(g, near(g, k), r) for r in ROUNDINGS}
        best_w = min(cands.values(), key=lambda w: (t[w], w))   # fastest; on equal times the smaller
        # of the roundings that give it: the coarsest when a smaller width measured no faster (alignment
        # matters, and the allocation must keep it), else the finest (no evidence that it does)
        aligned = any(t[w] >= t[best_w] for w in t if w < best_w)
        give = [r for r in ROUNDINGS if cands[r] == best_w]
        best_r = max(give) if aligned else min(give)
        pays = t[best_w] < t[g.channels]
        record[gid] = {"count": int(k), "rounding": int(best_r) if pays else None, "width": best_w,
                       "ms": {str(w): float(v) for w, v in sorted(t.items())}, "full_ms": float(t[g.channels]),
                       "pays": bool(pays)}
        widths[gid] = multiples(g, best_r, min_channels) if pays else np.array([g.channels], dtype=np.int64)
    return widths, record


def constrained(analysis: Analysis, allowed: dict[int, np.ndarray], min_channels: int) -> dict[int, np.ndarray]:
    """Allowed counts that the group can keep: at least its lowest count, multiples of its block multiple,
    and the full width."""
    out = {}
    for gid, ws in allowed.items():
        g = analysis.groups[gid]
        lo = _lowest(g, min_channels)
        ok = [int(w) for w in ws if lo <= w <= g.channels and w % g.multiple == 0]
        out[gid] = np.array(sorted(set(ok) | {g.channels}), dtype=np.int64)
    return out
