"""Streams calibration batches through activation taps and accumulates every consumer's statistics,
on the calibration and held-out splits (docs/DESIGN.md, "Statistics")."""
from __future__ import annotations

import numpy as np
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

    def run(self, cal: Calibration, tap_in: Tap, tap_out: Tap | OutputCache, desc: str) -> None:
        """Inputs from `tap_in` (the network pruned so far), outputs from `tap_out` (the original), or their
        sampled rows from an `OutputCache` of the original's consumer outputs."""
        bar = tqdm(total=cal.size, desc=desc, unit="sample", leave=False, disable=self.quiet or None)
        mp = self.options.max_positions
        for split in SPLITS:
            for first, batch in checked_batches(cal, self.options.batch_size, split):
                xs = tap_in(batch)
                n = len(next(iter(batch.values())))
                tokens = batch[self.token_mask] if self.token_mask else None
                if isinstance(tap_out, OutputCache):
                    pairs = [c.features(xs[c.input], None, first, mp, self.seed, tokens,
                                        outputs=(tap_out.rows(c.node, first, n), None)) for c in self.consumers]
                else:
                    ys = xs if tap_out is tap_in else tap_out(batch)
                    pairs = [c.features(xs[c.input], ys[c.output], first, mp, self.seed, tokens)
                             for c in self.consumers]
                for c, (x, y) in zip(self.consumers, pairs):
                    if not (np.isfinite(x.numpy()).all() and np.isfinite(y.numpy()).all()):
                        raise UserError(f"{cal.what}: activations at '{c.name}' are NaN or Inf")
                    st = self.stats[split].get(c.node)
                    if st is None:
                        st = self.stats[split][c.node] = Stats(x.shape[1], y.shape[1])
                    st.add(x, y)
                bar.update(len(next(iter(batch.values()))))
        bar.close()

