"""What the analysis produces: edits for the rewriter, MACs terms for the cost model, channel groups."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

FIXED = 0  # the atom of a channel that cannot change (e.g. a graph input concatenated with pruned channels)


@dataclass
class Edit:
    """A change the rewriter makes for a selection.

    kind: 'producer' or 'param' (slice `axis` of the node's constant input `input`),
    'consumer' (slice and scale by γ; in the masked reference: zero and scale),
    'grouped_consumer' (a grouped Conv's input slice, `groups` blocks),
    'mask_input' (a product that sums over channels and has no weight to zero: in the masked reference its
    run-time input `input` is multiplied by the channels' keep·γ on `axis`, in the pruned graph by the kept γ
    where one differs from 1), or
    'call' (pruned graph only: `fn(node, rewriter)` updates attributes or shape constants).
    """
    kind: str
    node: int
    input: int = -1
    axis: int = 0
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    groups: int = 1
    fn: Callable | None = None


@dataclass
class Cost:
    """MACs of one node for one sample; after pruning they scale with each factor's kept fraction.
    `known` is False when the layer's size is symbolic (its `macs` is then 0 and a MACs target is refused)."""
    node: str
    op: str
    macs: int
    factors: list = field(default_factory=list)
    known: bool = True


@dataclass
class Group:
    id: int
    classes: np.ndarray           # channel -> class id (root atom)
    producers: list[str]
    consumers: list[str]
    frozen: bool
    reasons: list[str]
    blocks: np.ndarray            # channel -> block index
    macs: int = 0
    proportional: bool = False    # blocks are Split/Slice pieces (kept counts proportional to size);
                                  # otherwise grouped-Conv groups (equal kept counts)
    # "heads": each channel is one attention head (docs/DESIGN.md, "Attention heads"); "qk_dims" / "v_dims": each
    # channel is one dim of every head, of the Q·K product or of V ("Dims within heads"); "channels": the rest
    kind: str = "channels"
    unit: int = 1                 # features each channel gives its consumers (a head's D, the heads of a dim);
                                  # --round-to counts them

    @property
    def kind_of_run(self) -> str:
        """What `--group-kind` calls the group: "heads" for any attention group (heads, or dims within
        heads), "channels" for the rest."""
        return "channels" if self.kind == "channels" else "heads"

    @property
    def channels(self) -> int:
        return len(self.classes)

    @property
    def n_blocks(self) -> int:
        return int(self.blocks.max()) + 1 if len(self.blocks) else 1

    @property
    def multiple(self) -> int:
        """Kept counts must be multiples of this."""
        return 1 if self.proportional else self.n_blocks

    def count_step(self, round_to: int = 1) -> int:
        """The step of kept counts: a multiple of the block multiple such that count × unit is a multiple of
        `round_to` (heads of D = 32 meet round_to 8 at any count)."""
        per = max(1, round_to) // int(np.gcd(max(1, round_to), self.unit))
        return int(np.lcm(per, self.multiple))

    @property
    def fewest(self) -> int:
        """The smallest kept count: one channel per block."""
        return self.n_blocks

    def quotas(self, k: int) -> np.ndarray:
        """Kept channels per block for `k` kept in all."""
        nb = self.n_blocks
        if nb == 1:
            return np.array([k])
        if not self.proportional:
            return np.full(nb, k // nb)
        sizes = np.bincount(self.blocks, minlength=nb)
        raw = k * sizes / sizes.sum()
        q = np.minimum(np.maximum(np.floor(raw).astype(np.int64), 1), sizes)
        while q.sum() < k:
            q[np.argmax(np.where(q < sizes, raw - q, -np.inf))] += 1
        while q.sum() > k:
            q[np.argmax(np.where(q > 1, q - raw, -np.inf))] -= 1
        return q
