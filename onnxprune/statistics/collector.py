"""Streams calibration batches through activation taps and accumulates every consumer's statistics,
on the calibration and held-out splits (docs/DESIGN.md, "Statistics")."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from ..calibration import Calibration, checked_batches
from ..calibration.taps import Tap
from ..errors import UserError
from ..options import CalibrationOptions
from .consumer import Consumer
from .moments import Stats
from .output_cache import OutputCache

SPLITS = ("calib", "holdout")


class Collector:
    """`stats[split][consumer node]`: the `Stats` of each consumer on each split (absent if it saw no rows:
    the held-out split can be empty)."""

    def __init__(self, consumers: list[Consumer], options: CalibrationOptions, seed: int, quiet: bool = True,
                 token_mask: str | None = None):
        """`token_mask`: the model input marking real tokens (1) and padding (0), whose padding rows are left
        out of the statistics (`Consumer.features`), or None."""
        self.consumers, self.options, self.seed, self.quiet = consumers, options, seed, quiet
        self.token_mask = token_mask
        self.stats: dict[str, dict[int, Stats]] = {split: {} for split in SPLITS}

    def run(self, cal: Calibration, tap_in: Tap, tap_out: Tap | OutputCache, desc: str,
            residual_keep: dict[int, np.ndarray] | None = None) -> None:
        """Inputs from `tap_in` (the network pruned so far), outputs from `tap_out` (the original), or their
        sampled rows from an `OutputCache` of the original's consumer outputs.

        `residual_keep[node]`: for a consumer whose output is added to a residual stream (`Consumer.residual`),
        its target becomes the original sum minus the stream in the network pruned so far, on the output
        channels marked True (the others are pruned: their target stays the original output). Both taps then
        give the residual operand too (docs/DESIGN.md, "Residual targets")."""
        bar = tqdm(total=cal.size, desc=desc, unit="sample", leave=False, disable=self.quiet or None)
        mp = self.options.max_positions
        # per residual consumer, the weight of the stream's error in its target (constant over batches)
        keep = residual_keep or {}
        weights = {c.node: _residual_weight(c, keep[c.node]) for c in self.consumers if c.residual and c.node in keep}
        joined = all(t.joins for t in (tap_in, tap_out) if isinstance(t, Tap))
        for split in SPLITS:
            for first, batch in checked_batches(cal, self.options.batch_size, split, joined):
                xs = tap_in(batch)
                n = len(next(iter(batch.values())))
                tokens = batch[self.token_mask] if self.token_mask else None
                ys = None if isinstance(tap_out, OutputCache) else xs if tap_out is tap_in else tap_out(batch)
                for c in self.consumers:
                    outputs: tuple[torch.Tensor, int | None]
                    if ys is None:
                        assert isinstance(tap_out, OutputCache)
                        outputs = (tap_out.rows(c.node, first, n), None)
                    else:
                        outputs = c.output_rows(ys[c.output], first, mp, self.seed, tokens)
                    if c.node in weights:
                        outputs = (self._residual_target(c, outputs[0], xs, ys, tap_out, first, n, tokens,
                                                         weights[c.node]), outputs[1])
                    x, y = c.features(xs[c.input], None, first, mp, self.seed, tokens, outputs=outputs)
                    if not (np.isfinite(x.numpy()).all() and np.isfinite(y.numpy()).all()):
                        raise UserError(f"{cal.what}: activations at '{c.name}' are NaN or Inf")
                    st = self.stats[split].get(c.node)
                    if st is None:
                        st = self.stats[split][c.node] = Stats(x.shape[1], y.shape[1])
                    st.add(x, y)
                bar.update(n)
        bar.close()

    def _residual_target(self, c: Consumer, y, xs, ys, tap_out, first: int, n: int, tokens, weight: torch.Tensor):
        """y + weight·(r_original − r_pruned) (`_residual_weight`): what the consumer must give for the sum to be
        the original's."""
        assert c.residual is not None
        mp = self.options.max_positions
        pruned, _ = c.output_rows(xs[c.residual], first, mp, self.seed, tokens)
        original = tap_out.rows(c.node, first, n, "residual") if ys is None else \
            c.output_rows(ys[c.residual], first, mp, self.seed, tokens)[0]
        if pruned.shape != y.shape or original.shape != y.shape:  # broadcast at run time: not a residual stream
            return y
        return y.to(torch.float64) + (original.to(torch.float64) - pruned.to(torch.float64)) * weight


def _residual_weight(c: Consumer, keep: np.ndarray) -> torch.Tensor:
    """1/a on the kept output channels, 0 on the others (a: the scale of the per-channel affine ops between the
    consumer and the Add, 1 without; 0 where a vanishes): y reaches the Add as a·y + b, so the stream's error
    counts 1/a in y."""
    weight = np.asarray(keep, np.float64)
    if c.residual_scale is not None:
        a = np.asarray(c.residual_scale, np.float64)
        usable = np.abs(a) > 1e-12 * max(float(np.abs(a).max()), 1e-300)
        weight = weight * np.where(usable, 1.0 / np.where(usable, a, 1.0), 0.0)
    return torch.from_numpy(weight)
