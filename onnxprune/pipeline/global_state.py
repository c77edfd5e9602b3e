"""Global imitation's state during a run: the torch twin of the original network and the output losses
on a calibration subset and on the held-out split (docs/DESIGN.md, "Global imitation")."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..analysis import Analysis
from ..calibration import Calibration
from ..graph.outputs import DISTRIBUTION, output_kind
from ..options import CalibrationOptions, GlobalOptions, OptionError, OutputLossKind
from ..selection import Selection
from ..selection.global_imitation import OutputLoss
from ..twin import Twin

log = logging.getLogger("onnxprune")


class GlobalImitation:
    def __init__(self, analysis: Analysis, cal: Calibration, method: str, options: GlobalOptions,
                 calibration: CalibrationOptions):
        self.analysis, self.options = analysis, options
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.original = Twin(analysis, device=self.device)
        except NotImplementedError as exc:
            raise OptionError("method", method, f"{exc}; the local methods (greedy-local) need no twin") from None
        kind, samples, batch = options.output_loss, options.global_samples, calibration.batch_size
        if kind == OutputLossKind.AUTO:  # docs/DESIGN.md, "Output kind"
            found, why = output_kind(analysis.model)
            kind = OutputLossKind.KL if found == DISTRIBUTION else OutputLossKind.MSE
            log.info("global methods: output loss %s (%s)", kind.value, why)
        self.kind = str(kind)
        self.calib = OutputLoss(cal, self.kind, samples, batch, self.device, "calib")
        self.holdout = OutputLoss(cal, self.kind, samples, batch, self.device, "holdout")
        for part in (self.calib, self.holdout):
            part.set_reference(self.original)

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
