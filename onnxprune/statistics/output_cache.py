"""The original network's consumer outputs at the sampled positions, computed once for the whole run
(docs/DESIGN.md, "Statistics").

Every group's statistics pair the consumers' inputs in the network pruned so far with their outputs in the
*original* network. The second half never changes during a run, yet tapping it per group costs a partial
forward of the original network per group. `OutputCache` computes it once: the calibration data streams
through the original network in chunks of consumers (tapped activations per batch bounded like the
profiling pass), and each consumer's output rows at exactly the positions `Consumer.features` samples
(`Consumer.output_rows`) are written to a float32 file in a temporary folder, read back per batch. Only
possible when positions are sampled (`max_positions`) and the rows fit `CACHE_BUDGET` bytes of disk;
otherwise the collector taps the original network per group as before. With a token mask the rows kept per
sample (its real tokens, at most `max_positions`) vary: each consumer's file then has per-sample offsets.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from ..calibration import Calibration, checked_batches
from ..calibration.taps import Tap
from ..errors import UserError
from .consumer import Consumer

CACHE_BUDGET = 6 << 30      # bytes of disk for the cached rows
TAP_BUDGET = 256 << 20      # bytes of tapped activations per batch in one pass


def _shape_of(model_shapes: dict, name: str):
    shape = model_shapes.get(name)
    if not shape or any(not isinstance(d, int) for d in shape[1:]):
        return None
    return shape


class OutputCache:
    """`rows(node, first, n)`: consumer `node`'s output rows (float32) for samples first .. first + n − 1."""

    def __init__(self, files: dict[int, tuple[Path, int]], offsets: dict[int, np.ndarray], size: int,
                 tmp: tempfile.TemporaryDirectory):
        """`files[node]` = (path, outputs); `offsets[node][i]`: the first row of sample i (size + 1 entries)."""
        self._tmp = tmp
        self.size = size
        self.offsets = offsets
        self.maps = {node: np.memmap(path, np.float32, "r", shape=(int(offsets[node][-1]), out))
                     for node, (path, out) in files.items() if offsets[node][-1] > 0}

    def __contains__(self, node: int) -> bool:
        return node in self.maps

    def rows(self, node: int, first: int, n: int) -> torch.Tensor:
        o = self.offsets[node]
        return torch.from_numpy(np.array(self.maps[node][o[first]:o[first + n]]))

    @staticmethod
    def plan(consumers: list[Consumer], shapes: dict, max_positions: int | None, size: int
             ) -> dict[int, tuple[int, int]] | None:
        """(rows per sample, outputs) of every consumer, or None when they cannot be cached: positions not
        sampled, unknown shapes, or more than CACHE_BUDGET bytes (or half the free temporary disk)."""
        if not max_positions:
            return None
        out: dict[int, tuple[int, int]] = {}
        for c in consumers:
            shape = _shape_of(shapes, c.output)
            if shape is None:
                return None
            if c.op == "Conv":
                per, width = int(np.prod(shape[2:], dtype=np.int64)), int(shape[1])
            else:
                per, width = int(np.prod(shape[1:-1], dtype=np.int64)), int(shape[-1])
            out[c.node] = (c.sampled_positions(per, max_positions), width)
        total = 4 * size * sum(p * w for p, w in out.values())
        free = shutil.disk_usage(tempfile.gettempdir()).free
        return out if total <= min(CACHE_BUDGET, free // 2) else None

    @classmethod
    def build(cls, cal: Calibration, model: onnx.ModelProto, consumers: list[Consumer], shapes: dict,
              plan: dict[int, tuple[int, int]], batch_size: int, max_positions: int | None, seed: int,
              token_mask: str | None = None) -> OutputCache:
        """`token_mask`: the input marking real tokens, whose padding rows `Consumer.output_rows` leaves out."""
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune-outputs-")
        files = {c.node: (Path(tmp.name) / f"{c.node}.f32", plan[c.node][1]) for c in consumers}
        counts = {c.node: np.zeros(cal.size + 1, np.int64) for c in consumers}
        chunks: list[list[Consumer]] = []
        size = 0
        for c in consumers:
            shape = _shape_of(shapes, c.output)
            cost = batch_size * 4 * int(np.prod(shape[1:], dtype=np.int64)) if shape else TAP_BUDGET
            if not chunks or size + cost > TAP_BUDGET:
                chunks.append([])
                size = 0
            chunks[-1].append(c)
            size += cost
        for chunk in chunks:
            tap = Tap(model, [c.output for c in chunk])
            handles = {c.node: open(files[c.node][0], "wb") for c in chunk}
            try:
                expected = 0
                for first, batch in checked_batches(cal, batch_size, "all"):
                    n = len(next(iter(batch.values())))
                    if first != expected:
                        raise ValueError(f"output cache: samples out of order ({first}, expected {expected})")
                    expected += n
                    ys = tap(batch)
                    tokens = batch[token_mask] if token_mask else None
                    for c in chunk:
                        out, n_pos = c.output_rows(ys[c.output], first, max_positions, seed, tokens)
                        rows = out.numpy().astype(np.float32)
                        if not np.isfinite(rows).all():
                            raise UserError(f"{cal.what}: activations at '{c.name}' are NaN or Inf")
                        per, width = plan[c.node]
                        if n_pos == -1:  # real tokens only: the mask's count per sample, at most max_positions
                            real = np.count_nonzero(np.asarray(tokens) != 0, axis=1)
                            each = np.minimum(real, max_positions) if max_positions else real
                        else:
                            each = np.full(n, per)
                        if rows.shape != (int(each.sum()), width):
                            raise ValueError(f"output cache: '{c.name}' gave rows of shape {rows.shape}")
                        counts[c.node][first + 1:first + 1 + n] = each
                        handles[c.node].write(rows.tobytes())
            finally:
                for h in handles.values():
                    h.close()
        return cls(files, {node: np.cumsum(c) for node, c in counts.items()}, cal.size, tmp)
