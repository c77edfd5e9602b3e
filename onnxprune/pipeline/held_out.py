"""The output loss of a pruned model against the original on given batches (the held-out split): the gate
of the passes that are kept only if they lower it (docs/DESIGN.md, "Re-fit sweep", "Bias correction")."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import torch

from ..calibration import Calibration, checked_batches
from ..calibration.taps import Tap
from ..selection.global_imitation import output_discrepancy


def held_out_batches(cal: Calibration, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The held-out split's batches (none without a held-out split)."""
    return [b for _, b in checked_batches(cal, batch_size, "holdout")]


def output_loss(original: onnx.ModelProto, model: onnx.ModelProto, batches, kind: str) -> float:
    """Mean over samples of the output discrepancy (`kind`: KL or MSE) of `model` against `original`, summed
    over every output of the original."""
    outputs = [o.name for o in original.graph.output]
    ref, got = Tap(original, outputs), Tap(model, outputs)
    total, n = 0.0, 0
    for batch in batches:
        a, b = ref(batch), got(batch)
        for name in outputs:
            total += float(output_discrepancy(torch.from_numpy(np.asarray(b[name])),
                                              torch.from_numpy(np.asarray(a[name])), kind))
        n += len(next(iter(batch.values())))
    return total / max(n, 1)


@dataclass
class GatedRecord:
    """What a gated pass did: both held-out output losses, whether its model was kept, and why not (or that
    nothing checked it). The passes' records extend it (the report's `refit_sweep`, `bias_correction`)."""
    held_out_loss_before: float | None = None
    held_out_loss_after: float | None = None
    applied: bool = False
    why: str = ""

    def judge(self, original: onnx.ModelProto, before: onnx.ModelProto, after: onnx.ModelProto, batches,
              kind: str) -> bool:
        """Keep `after` only if its output loss on `batches` (the held-out split) is lower than `before`'s; without
        batches it is kept unchecked. Returns whether it is kept."""
        if batches:
            self.held_out_loss_before = output_loss(original, before, batches, kind)
            self.held_out_loss_after = output_loss(original, after, batches, kind)
            self.applied = self.held_out_loss_after < self.held_out_loss_before
            if not self.applied:
                self.why = "the held-out output loss did not fall"
        else:
            self.applied, self.why = True, "no held-out split: applied without a check"
        return self.applied

    def to_dict(self) -> dict:
        return asdict(self)
