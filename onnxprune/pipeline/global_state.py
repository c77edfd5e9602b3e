"""Global imitation's state during a run: the torch twin of the original network and the output losses
on a calibration subset and on the held-out split (docs/DESIGN.md, "Global imitation")."""
from __future__ import annotations

import logging
from functools import cached_property

import numpy as np
import torch

from ..analysis import Analysis
from ..calibration import Calibration
from ..calibration.taps import Tap
from ..graph.outputs import resolve_output_loss
from ..options import CalibrationOptions, GlobalOptions, OptionError, OutputLossKind
from ..selection import Selection
from ..selection.global_imitation import OutputLoss
from ..twin import Twin

log = logging.getLogger("onnxprune")
LOCAL_ADVICE = "the local methods (greedy-local) need no twin"


class TwinUnavailable(OptionError):
    """The torch twin cannot run the model (an op or a subgraph it does not know): `cause` says why."""

    def __init__(self, option: str, value, cause: str, advice: str):
        self.cause = cause
        super().__init__(option, value, f"{cause}; {advice}")


# largest relative difference (of the output's largest magnitude) of the twin's outputs from ONNX Runtime's that is
# trusted: float32 models agree to ~1e-5 (tests/test_twin.py), half-precision ones to ~1e-3
TWIN_TOLERANCE = {np.dtype(np.float16): 1e-2}
TWIN_TOLERANCE_DEFAULT = 1e-3


def twin_difference(model, pairs) -> tuple[float, float]:
    """(largest relative difference, tolerance) of twin outputs from ONNX Runtime's on the same inputs: `pairs`
    of (inputs: name -> array or tensor, the twin's first output on them)."""
    name = model.graph.output[0].name
    tap = Tap(model, [name])
    worst, tol = 0.0, TWIN_TOLERANCE_DEFAULT
    for batch, ref in pairs:
        out = np.asarray(tap({k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v
                              for k, v in batch.items()})[name])
        tol = max(tol, TWIN_TOLERANCE.get(out.dtype, TWIN_TOLERANCE_DEFAULT))
        want = out.astype(np.float64)
        got = ref.detach().cpu().double().numpy().reshape(want.shape)
        worst = max(worst, float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)))
    return worst, tol


def differs_reason(worst: float, tol: float) -> str:
    return (f"the torch twin's outputs differ from ONNX Runtime's on this model (relative difference {worst:.2g} > "
            f"{tol:g})")


class GlobalImitation:
    def __init__(self, analysis: Analysis, cal: Calibration, method: str, options: GlobalOptions,
                 calibration: CalibrationOptions):
        self.analysis, self.options, self.method = analysis, options, method
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.original = Twin(analysis, device=self.device)
        except NotImplementedError as exc:
            raise TwinUnavailable("method", method, str(exc), LOCAL_ADVICE) from None
        kind, why = resolve_output_loss(analysis.model, options.output_loss)  # docs/DESIGN.md, "Output kind"
        if options.output_loss == OutputLossKind.AUTO:
            log.info("global methods: output loss %s (%s)", kind.value, why)
        self.kind = str(kind)
        self._cal, self._batch = cal, calibration.batch_size
        self._checked = False   # the twin's outputs compared with ONNX Runtime's (`_subset`)

    def _subset(self, split: str) -> OutputLoss:
        part = OutputLoss(self._cal, self.kind, self.options.global_samples, self._batch,
                          self.device, split)
        try:
            part.set_reference(self.original)
        except NotImplementedError as exc:  # an op setting the twin refuses when it runs
            raise TwinUnavailable("method", self.method, str(exc), LOCAL_ADVICE) from None
        # a twin that computes something else on this model would steer every decision by a wrong loss; checked
        # on the first subset built (the same twin computes the other's reference)
        if not self._checked:
            worst, tol = twin_difference(self.analysis.model, zip(part.batches, part.reference))
            if not worst <= tol:
                raise TwinUnavailable("method", self.method, differs_reason(worst, tol), LOCAL_ADVICE)
            self._checked = True
        return part

    @cached_property
    def calib(self) -> OutputLoss:
        """The output loss on the first `global_samples` calibration samples (built when first used)."""
        return self._subset("calib")

    @cached_property
    def holdout(self) -> OutputLoss:
        """The output loss on the held-out split (built when first used)."""
        return self._subset("holdout")

    def twin_for(self, sel: Selection, start: int = 0):
        """A twin and the gates that make it the masked reference of `sel`. Re-fitted weights are given to the
        original twin as run-time overrides (no new twin) when every channel they read has γ = 1 (the full
        re-fit's); with `start` > 0 each call runs the network up to that step without gradients and only the
        rest with them: right for gates of channels consumed at `start` or later (the group being decided)."""
        keep, gamma = sel.class_arrays(self.analysis)
        gates = torch.as_tensor(np.where(keep, gamma, 0.0), dtype=torch.float32, device=self.device)
        roots = self.analysis.class_of
        read = {e.node: roots[e.labels] for e in self.analysis.edits if e.kind in ("consumer", "grouped_consumer")}
        if sel.replace and any(np.any(gamma[read[n]] != 1.0) for n in sel.replace if n in read):
            twin = Twin(self.analysis, device=self.device, replace=sel.replace, keep=keep)
            return _Bound(twin, None, start), gates
        weights = {(node, i): torch.as_tensor(np.asarray(v), device=self.device).to(torch.float32)
                   for node, values in sel.replace.items() for i, v in values.items()}
        return _Bound(self.original, weights or None, start), gates

    def output_loss(self, sel: Selection, held: bool, start: int = 0) -> float:
        """Output discrepancy of `sel`'s masked reference (held-out split when it has samples)."""
        twin, gates = self.twin_for(sel, start)
        return (self.holdout if held and self.holdout.samples else self.calib).value(twin, gates)


class _Bound:
    """A twin called as `twin(inputs, gates)` with run-time weights and, from step `start` on, gradients."""

    def __init__(self, twin: Twin, weights: dict | None, start: int):
        self.twin, self.weights, self.start = twin, weights, start

    def __call__(self, inputs: dict, gates: torch.Tensor | None = None) -> list[torch.Tensor]:
        state = self.twin.start(inputs)
        if self.start:
            with torch.no_grad():
                state = self.twin.advance(state, self.start, None if gates is None else gates.detach())
        return self.twin.resume(state, gates, weights=self.weights)
