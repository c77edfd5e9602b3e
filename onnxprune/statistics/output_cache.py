"""The original network's consumer outputs at the sampled positions, computed once for the whole run
(docs/DESIGN.md, "Statistics").

Every group's statistics pair the consumers' inputs in the network pruned so far with their outputs in the
*original* network. The second half never changes during a run, yet tapping it per group costs a partial
forward of the original network per group. `OutputCache` computes it once: the calibration data streams
through the original network in chunks of consumers (tapped activations per batch bounded like the
profiling pass), and each consumer's output rows at exactly the positions `Consumer.features` samples
(`Consumer.output_rows`) are written to a float32 file in a temporary folder, read back per batch. Only
possible when positions are sampled (`max_positions`) and the rows fit `CACHE_BUDGET` bytes of disk;
otherwise the collector taps the original network per group as before.
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

    def __init__(self, files: dict[int, tuple[Path, int, int]], size: int, tmp: tempfile.TemporaryDirectory):
        self._tmp = tmp
        self.size = size
        self.maps = {node: np.memmap(path, np.float32, "r", shape=(size, per, out))
                     for node, (path, per, out) in files.items()}

    def __contains__(self, node: int) -> bool:
        return node in self.maps

    def rows(self, node: int, first: int, n: int) -> torch.Tensor:
        block = self.maps[node][first:first + n]
        return torch.from_numpy(np.array(block).reshape(-1, block.shape[-1]))

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
              plan: dict[int, tuple[int, int]], batch_size: int, max_positions: int | None, seed: int
              ) -> OutputCache:
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune-outputs-")
        files = {c.node: (Path(tmp.name) / f"{c.node}.f32", *plan[c.node]) for c in consumers}
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
                for first, batch in checked_batches(cal, batch_size, "all"):
                    ys = tap(batch)
                    for c in chunk:
                        rows = c.output_rows(ys[c.output], first, max_positions, seed).numpy().astype(np.float32)
                        if not np.isfinite(rows).all():
                            raise UserError(f"{cal.what}: activations at '{c.name}' are NaN or Inf")
                        per, width = plan[c.node]
                        if rows.shape != (len(next(iter(batch.values()))) * per, width):
                            raise ValueError(f"output cache: '{c.name}' gave rows of shape {rows.shape}")
                        handles[c.node].write(rows.tobytes())
            finally:
                for h in handles.values():
                    h.close()
        return cls(files, cal.size, tmp)
