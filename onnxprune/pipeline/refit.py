"""Re-fits after selection (docs/DESIGN.md, "Re-fit levels"): `gamma`, one least-squares scale per kept
channel, and `full`, each consumer's whole weight and bias re-fitted on its kept inputs by ridge least
squares, the ridge strength chosen on the held-out split."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..analysis import Analysis
from ..options import Refit
from ..selection import Selection
from ..statistics.consumer import Consumer, bias_index, to_onnx
from ..statistics.moments import loss, ridge_refit, scale_refit
from .terms import current_weights

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


@dataclass
class Outcome:
    """A group's decision with its re-fit applied (not yet committed) and its imitation errors."""
    kept: np.ndarray
    gamma: np.ndarray
    replace: dict = field(default_factory=dict)   # node -> input -> re-fitted ONNX value
    dense: dict = field(default_factory=dict)     # node -> re-fitted W̃
    err_calib: float | None = None
    err_holdout: float | None = None
    ridge: dict = field(default_factory=dict)      # consumer name -> the ridge strength chosen (full re-fit)


def apply_refit(analysis: Analysis, sel: Selection, dense: dict[int, np.ndarray], problem, idx: np.ndarray,
                gam: np.ndarray, refit: Refit, ridge: float, chosen: dict[str, float] | None = None) -> Outcome:
    """Re-fit the candidate (kept `idx`, scales `gam`) of `problem`'s group on top of the selection so far.
    `chosen` (consumer name -> ridge strength) skips the held-out choice of the ridge for those consumers
    and uses the strength given (the output-aware curves choose it once per consumer, not at every width)."""
    out = Outcome(idx, gam)
    if refit == Refit.FULL:
        out.gamma = np.ones(len(idx))
        trial = Selection(dict(sel.kept), dict(sel.gamma))
        trial.kept[problem.group.id], trial.gamma[problem.group.id] = idx, out.gamma
        new_keep, _ = trial.class_arrays(analysis)
        total, total_h = _full_refit(analysis, dense, problem, new_keep, out, ridge, chosen or {})
        out.err_calib = total / max(problem.rr, 1e-300)
        out.err_holdout = None if problem.held is None else total_h / max(problem.rrh, 1e-300)
    else:
        out.err_calib = loss(problem.G, problem.c, problem.rr, idx, gam) / max(problem.rr, 1e-300)
        if problem.held is not None:
            out.err_holdout = loss(problem.Gh, problem.ch, problem.rrh, idx, gam) / max(problem.rrh, 1e-300)
    return out


def _full_refit(analysis: Analysis, dense: dict[int, np.ndarray], problem, new_keep: np.ndarray, out: Outcome,
                ridge: float, chosen: dict[str, float]) -> tuple[float, float]:
    """Ridge re-fit of every consumer's whole weight (and bias) on its kept inputs; returns the summed loss
    on the calibration and held-out splits."""
    roots = analysis.class_of
    total, total_h = 0.0, 0.0
    c: Consumer
    for c in problem.consumers:
        current = current_weights(analysis, dense, c, problem.keep, problem.gamma)
        fixed_bias = None if bias_index(c, analysis) is not None else current[:, -1]
        calib, held = problem.stats["calib"][c.node], problem.stats["holdout"].get(c.node)
        feats = new_keep[roots[c.labels]]
        blocks = c.blocks(current.shape[0])
        if calib.rows < len(c.labels):
            # fewer rows than inputs (a classifier after global pooling sees one row per sample): a whole
            # weight would follow these rows at any width. The prior becomes the current weights with one
            # least-squares scale per kept input (and their bias); the ridge towards it is chosen on the
            # held-out split as below, infinity being that scale fit itself (docs/DESIGN.md, "Re-fit levels")
            prior = scale_refit(calib, feats, current, fixed_bias)
            grid: tuple[float, ...] = RIDGE_GRID + (np.inf,) if held is not None else (np.inf,)
        else:
            # ridge towards the current weights, its strength chosen on the held-out split when there is
            # one: with few samples per input the fit stays near the original instead of near 0
            prior, grid = current, RIDGE_GRID if held is not None else (ridge,)
        lams = (chosen[c.name],) if c.name in chosen else grid
        fits = [ridge_refit(calib, feats, lam, fixed_bias, prior=prior, blocks=blocks) for lam in lams]
        best = int(np.argmin([held.loss(f) for f in fits])) if held is not None and len(fits) > 1 else 0
        wt = fits[best]
        out.ridge[c.name] = float(lams[best])
        out.dense[c.node] = wt
        for node, values in to_onnx(c, analysis, wt).items():
            out.replace.setdefault(node, {}).update(values)
        total += calib.loss(wt)
        if held is not None:
            total_h += held.loss(wt)
    return total, total_h
