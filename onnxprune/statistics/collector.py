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

    def run(self, cal: Calibration, tap_in: Tap, tap_out: Tap | None, desc: str,
            outputs: OutputCache | None = None) -> None:
        """Inputs from `tap_in` (the network pruned so far), outputs from `tap_out` (the original), or from
        `outputs`, where the original's outputs of every consumer were kept."""
        bar = tqdm(total=cal.size, desc=desc, unit="sample", leave=False, disable=self.quiet or None)
        for split in SPLITS:
            for first, batch in checked_batches(cal, self.options.batch_size, split):
                xs = tap_in(batch)
                ys = {} if tap_out is None else xs if tap_out is tap_in else tap_out(batch)
                tokens = batch[self.token_mask] if self.token_mask else None
                for c in self.consumers:
                    kept = outputs.rows[split][c.node][first] if outputs is not None else None
                    x, y = c.features(xs[c.input], ys.get(c.output), first, self.options.max_positions, self.seed,
                                      tokens, kept)
                    if not (np.isfinite(x.numpy()).all() and np.isfinite(y.numpy()).all()):
                        raise UserError(f"{cal.what}: activations at '{c.name}' are NaN or Inf")
                    st = self.stats[split].get(c.node)
                    if st is None:
                        st = self.stats[split][c.node] = Stats(x.shape[1], y.shape[1])
                    st.add(x, y)
                bar.update(len(next(iter(batch.values()))))
        bar.close()


class OutputCache:
    """The original network's outputs of many consumers at the rows their statistics use, for every batch of
    both splits, from one pass over the data: the sequential pass then taps only the network pruned so far
    (docs/DESIGN.md, "The sequential pass"). `rows[split][consumer node][first sample]` = (rows, positions)."""

    LIMIT = 1 << 30  # bytes: above this the outputs are tapped again for every group

    def __init__(self, consumers: list[Consumer], options: CalibrationOptions, seed: int, token_mask: str | None):
        self.consumers, self.options, self.seed, self.token_mask = consumers, options, seed, token_mask
        self.rows: dict[str, dict[int, dict[int, tuple]]] = {split: {c.node: {} for c in consumers} for split in SPLITS}

    @staticmethod
    def size(consumers: list[Consumer], shapes: dict[str, tuple | None], samples: int, max_positions: int | None):
        """An upper bound of the bytes kept (None when an output's shape is not known)."""
        total = 0
        for c in consumers:
            shape = shapes.get(c.output)
            if shape is None or any(not isinstance(d, int) for d in shape[1:]) or len(shape) < 2:
                return None
            out = shape[1] if c.op == "Conv" else shape[-1]
            positions = int(np.prod(shape[1:], dtype=np.int64)) // out
            total += samples * min(positions, max_positions or positions) * out * 4  # float32 outputs
        return total

    def run(self, cal: Calibration, tap: Tap, quiet: bool = True) -> None:
        bar = tqdm(total=cal.size, desc="original outputs", unit="sample", leave=False, disable=quiet or None)
        for split in SPLITS:
            for first, batch in checked_batches(cal, self.options.batch_size, split):
                ys = tap(batch)
                tokens = batch[self.token_mask] if self.token_mask else None
                for c in self.consumers:
                    rows, n_pos = c.output_rows(ys[c.output], first, self.options.max_positions, self.seed, tokens)
                    self.rows[split][c.node][first] = (rows.clone(), n_pos)
                bar.update(len(next(iter(batch.values()))))
        bar.close()
