"""The original network's consumer outputs at the sampled positions, computed once for the whole run
(docs/DESIGN.md, "Statistics").

Every group's statistics pair the consumers' inputs in the network pruned so far with their outputs in the
*original* network. The second half never changes during a run, yet tapping it per group costs a partial
forward of the original network per group. `OutputCache` computes it once: the calibration data streams
through the original network in chunks of consumers (tapped activations per batch bounded like the
profiling pass), and each consumer's output rows at exactly the positions `Consumer.features` samples
(`Consumer.output_rows`) are written to a float32 file in a temporary folder, read back per batch. Only
possible when positions are sampled (`max_positions`) and the rows fit `CACHE_BUDGET` bytes of disk;
otherwise the collector taps the original network per group as before. Beside a consumer's output, the
cache holds the rows of its residual operand (`Consumer.residual`) at the same positions. With a token mask
the rows kept per sample (its real tokens, at most `max_positions`) vary: each file then has per-sample
offsets.
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


Key = tuple[int, str]   # (consumer node, role): "output", or "residual" for the other operand of its residual Add


def entries(consumers: list[Consumer]) -> list[tuple[Key, Consumer, str]]:
    """What the cache holds: each consumer's output, and the residual operand beside it where it has one."""
    out = [((c.node, "output"), c, c.output) for c in consumers]
    return out + [((c.node, "residual"), c, c.residual) for c in consumers if c.residual]


class OutputCache:
    """`rows(node, first, n, role)`: consumer `node`'s output rows (role "output"), or the rows of its residual
    operand at the same positions (role "residual"), float32, for samples first .. first + n − 1."""

    def __init__(self, files: dict[Key, tuple[Path, int]], offsets: dict[Key, np.ndarray], size: int,
                 tmp: tempfile.TemporaryDirectory):
        """`files[key]` = (path, outputs); `offsets[key][i]`: the first row of sample i (size + 1 entries)."""
        self._tmp = tmp
        self.size = size
        self.offsets = offsets
        self.maps = {key: np.memmap(path, np.float32, "r", shape=(int(offsets[key][-1]), out))
                     for key, (path, out) in files.items() if offsets[key][-1] > 0}

    def __contains__(self, key: Key) -> bool:
        return key in self.maps

    def holds(self, consumer: Consumer) -> bool:
        """Whether every row the collector needs from the original network for `consumer` is cached."""
        return (consumer.node, "output") in self and (not consumer.residual or (consumer.node, "residual") in self)

    def rows(self, node: int, first: int, n: int, role: str = "output") -> torch.Tensor:
        o = self.offsets[(node, role)]
        return torch.from_numpy(np.array(self.maps[(node, role)][o[first]:o[first + n]]))

    @staticmethod
    def plan(consumers: list[Consumer], shapes: dict, max_positions: int | None, size: int
             ) -> dict[Key, tuple[int, int]] | None:
        """(rows per sample, outputs) of every entry, or None when they cannot be cached: positions not
        sampled, unknown shapes, or more than CACHE_BUDGET bytes (or half the free temporary disk)."""
        if not max_positions:
            return None
        out: dict[Key, tuple[int, int]] = {}
        for key, c, _ in entries(consumers):
            shape = _shape_of(shapes, c.output)   # a residual operand has its consumer's output shape
            if shape is None:
                return None
            if c.op == "Conv":
                per, width = int(np.prod(shape[2:], dtype=np.int64)), int(shape[1])
            else:
                per, width = int(np.prod(shape[1:-1], dtype=np.int64)), int(shape[-1])
            out[key] = (c.sampled_positions(per, max_positions), width)
        total = 4 * size * sum(p * w for p, w in out.values())
        free = shutil.disk_usage(tempfile.gettempdir()).free
        return out if total <= min(CACHE_BUDGET, free // 2) else None

    @classmethod
    def build(cls, cal: Calibration, model: onnx.ModelProto, consumers: list[Consumer], shapes: dict,
              plan: dict[Key, tuple[int, int]], batch_size: int, max_positions: int | None, seed: int,
              token_mask: str | None = None) -> OutputCache:
        """`token_mask`: the input marking real tokens, whose padding rows `Consumer.output_rows` leaves out."""
        tmp = tempfile.TemporaryDirectory(prefix="onnxprune-outputs-")
        todo = entries(consumers)
        files = {key: (Path(tmp.name) / f"{key[0]}.{key[1]}.f32", plan[key][1]) for key, _, _ in todo}
        counts = {key: np.zeros(cal.size + 1, np.int64) for key, _, _ in todo}
        chunks: list[list[tuple[Key, Consumer, str]]] = []
        size = 0
        for entry in todo:
            shape = _shape_of(shapes, entry[1].output)
            cost = batch_size * 4 * int(np.prod(shape[1:], dtype=np.int64)) if shape else TAP_BUDGET
            if not chunks or size + cost > TAP_BUDGET:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += cost
        for chunk in chunks:
            tap = Tap(model, [name for _, _, name in chunk])
            handles = {key: open(files[key][0], "wb") for key, _, _ in chunk}
            try:
                expected = 0
                for first, batch in checked_batches(cal, batch_size, "all", tap.joins):
                    n = len(next(iter(batch.values())))
                    if first != expected:
                        raise ValueError(f"output cache: samples out of order ({first}, expected {expected})")
                    expected += n
                    ys = tap(batch)
                    tokens = batch[token_mask] if token_mask else None
                    for key, c, name in chunk:
                        out, n_pos = c.output_rows(ys[name], first, max_positions, seed, tokens)
                        rows = out.numpy().astype(np.float32)
                        if not np.isfinite(rows).all():
                            raise UserError(f"{cal.what}: activations at '{c.name}' are NaN or Inf")
                        per, width = plan[key]
                        if n_pos == -1:  # real tokens only: the mask's count per sample, at most max_positions
                            real = np.count_nonzero(np.asarray(tokens) != 0, axis=1)
                            each = np.minimum(real, max_positions) if max_positions else real
                        else:
                            each = np.full(n, per)
                        if rows.shape != (int(each.sum()), width):
                            raise ValueError(f"output cache: '{name}' gave rows of shape {rows.shape}")
                        counts[key][first + 1:first + 1 + n] = each
                        handles[key].write(rows.tobytes())
            finally:
                for h in handles.values():
                    h.close()
        return cls(files, {key: np.cumsum(c) for key, c in counts.items()}, cal.size, tmp)
