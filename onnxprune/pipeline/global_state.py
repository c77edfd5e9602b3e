"""Global imitation's state during a run: the torch twin of the original network and the output losses
on a calibration subset and on the held-out split (docs/DESIGN.md, "Global imitation")."""
from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..analysis import Analysis
from ..calibration import Calibration
from ..options import CalibrationOptions, GlobalOptions, OptionError
from ..selection import Selection
from ..selection.global_imitation import OutputLoss
from ..twin import Twin


class GlobalImitation:
    def __init__(self, analysis: Analysis, cal: Calibration, method: str, options: GlobalOptions,
                 calibration: CalibrationOptions):
        self.analysis, self.options = analysis, options
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.original = Twin(analysis, device=self.device)
        except NotImplementedError as exc:
            raise OptionError("method", method, f"{exc}; the local methods (greedy-local) need no twin") from None
        self._cal, self._batch = cal, calibration.batch_size

    def _subset(self, split: str) -> OutputLoss:
        part = OutputLoss(self._cal, self.options.output_loss, self.options.global_samples, self._batch,
                          self.device, split)
        part.set_reference(self.original)
        return part

    @cached_property
    def calib(self) -> OutputLoss:
        """The output loss on the first `global_samples` calibration samples (built when first used)."""
        return self._subset("calib")

    @cached_property
    def holdout(self) -> OutputLoss:
        """The output loss on the held-out split (built when first used)."""
        return self._subset("holdout")

    def twin_for(self, sel: Selection):
        """The twin and the gates that make it the masked reference of `sel`."""
        keep, gamma = sel.class_arrays(self.analysis)
        twin = Twin(self.analysis, device=self.device, replace=sel.replace, keep=keep) if sel.replace \
            else self.original
        gates = torch.as_tensor(np.where(keep, gamma, 0.0), dtype=torch.float32, device=self.device)
        return twin, gates

    def output_loss(self, sel: Selection, held: bool) -> float:
        """Output discrepancy of `sel`'s masked reference (held-out split when it has samples)."""
        twin, gates = self.twin_for(sel)
        return (self.holdout if held and self.holdout.samples else self.calib).value(twin, gates)
