"""The record of a pruning run: what was kept, what it cost, what was frozen and why."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import onnx

from ..analysis import Analysis
from ..analysis.cost import macs
from ..graph.params import count_params
from ..selection import Selection


@dataclass
class GroupReport:
    id: int
    channels: int
    kept_count: int
    kept: list[int]
    gamma: list[float]
    frozen: bool
    reasons: list[str]
    producers: list[str]
    consumers: list[str]
    macs_share: float
    method: str | None = None
    err_calib: float | None = None     # relative imitation error of the group's consumers
    err_holdout: float | None = None
    curve: list[float] = field(default_factory=list)  # relative loss with n = 0, 1, ... channels
    note: str = ""
    candidates: list[dict] = field(default_factory=list)  # a composite method's candidates, best first
    kind: str = "channels"   # "heads": each channel an attention head of `unit` features; "qk_dims", "v_dims": one
                             # dim of `unit` heads (docs/DESIGN.md, "Dims within heads")
    unit: int = 1


@dataclass
class Report:
    model: str
    method: str
    target: dict
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    groups: list[GroupReport] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    refit: str = "none"
    allocate: str = "uniform"
    calibration_samples: int = 0
    layers: list[dict] = field(default_factory=list)   # {"node", "op", "macs_before", "macs_after"}
    # what was measured (round_to=auto: the probe and the check; a latency target: the table, the allocations
    # measured, the final model against the original); empty when nothing was
    latency: dict = field(default_factory=dict)
    macs_unknown: list[str] = field(default_factory=list)  # layers whose MACs are unknown (symbolic sizes)
    token_mask: str | None = None    # the input whose padding tokens were left out of the statistics
    attention: str = "heads"         # --attention: what attention blocks lost (heads, or dims within heads)
    # --attention dims: groups re-based ({"qk_dims_groups", "v_dims_groups"}), the outputs' relative change, the
    # Q·K dims groups kept whole with why, and "failed" when re-basing changed the outputs (auto then read heads)
    head_basis: dict | None = None
    fixed_batch: int | None = None   # the model's fixed batch dimension, the size of every calibration run
    output_loss: str | None = None   # the global methods' output loss (kl or mse), when one ran
    distill: dict | None = None   # the distillation's record (`onnxprune.distill.DistillRecord`), if it ran
    refit_sweep: dict | None = None       # `onnxprune.pipeline.refit_sweep.RefitSweepRecord`, if it ran
    bias_correction: dict | None = None   # `onnxprune.bias_correction.BiasCorrectionRecord`, if it ran
    # allocate=output: {"chosen", "held_out_output_loss": {candidate: loss}}; auto that could not use output:
    # {"chosen": "uniform", "output_unavailable": why}
    allocation: dict | None = None
    # what the run decided, for `masked_reference` and further rewrites; not part of the JSON record
    selection: Selection | None = field(default=None, repr=False, compare=False, metadata={"record": False})
    analysis: Analysis | None = field(default=None, repr=False, compare=False, metadata={"record": False})

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("record", True)}
        d["groups"] = [asdict(g) for g in self.groups]
        d["macs_ratio"] = self.macs_ratio
        d["params_ratio"] = self.params_after / self.params_before if self.params_before else 1.0
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=_jsonable)

    def summary(self) -> str:
        prunable = [g for g in self.groups if not g.frozen]
        unknown = (f", {len(self.macs_unknown)} layers of unknown size not counted (symbolic shapes)"
                   if self.macs_unknown else "")
        text = (f"MACs   {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.1%}){unknown}\n"
                f"params {self.params_before:,} -> {self.params_after:,} "
                f"({self.params_after / max(self.params_before, 1):.1%})\n"
                f"groups {len(prunable)} pruned, {len(self.groups) - len(prunable)} frozen")
        if self.fixed_batch:
            text += (f"\nbatch  fixed at {self.fixed_batch} by the model's inputs: calibration ran "
                     f"{self.fixed_batch} sample{'s' if self.fixed_batch > 1 else ''} at a time")
        if self.token_mask:
            text += f"\ntokens padding left out of the statistics (input '{self.token_mask}')"
        b = self.head_basis
        if b and b.get("failed"):
            text += f"\nheads  whole heads pruned: {b['failed']}"
        elif b:
            change = "" if b["output_change"] is None else f"; outputs changed by {b['output_change']:.2g}"
            whole = f"; {len(b['kept_whole'])} Q·K dims groups kept whole" if b["kept_whole"] else ""
            text += (f"\nheads  dims within heads pruned: {b['qk_dims_groups']} Q·K dims and {b['v_dims_groups']} V "
                     f"dims groups re-based on the calibration data{change}{whole}")
        if self.output_loss:
            text += f"\nglobal output loss {self.output_loss}"
        if self.allocation and "output_unavailable" in self.allocation:
            why = self.allocation["output_unavailable"]
            text += f"\nallocation uniform: output-aware allocation unavailable ({why})"
        elif self.allocation:
            losses = self.allocation.get("held_out_output_loss", {})
            text += (f"\nallocation {self.allocation['chosen']} chosen (held-out output loss "
                     + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()) + ")")
        w = self.refit_sweep
        if w:
            text += "\n" + _gated("re-fit sweep", w, f"{w['groups']} groups re-fitted again")
        b = self.bias_correction
        if b:
            text += "\n" + _gated("bias correction", b, f"{b['layers']} layers on {b['samples']} samples")
        d = self.distill
        if d:
            did = (f"{d['held_out_loss_before']:.4g} -> {d['held_out_loss_best']:.4g}, best epoch {d['best_epoch']}"
                   if d["applied"] else "no epoch improved on it, model left as pruned")
            text += (f"\ndistillation {d['output_loss']} on {d['held_out_samples']} held-out samples {did}; "
                     f"{d['epochs']} epochs, stopped by {d['stopped']}, {d['seconds']:.0f} s on {d['device']}")
        m = self.latency.get("measured")
        if m:
            text += (f"\nlatency {m['original_ms']:.3f} ms -> {m['pruned_ms']:.3f} ms (medians), speed-up "
                     f"{m['speedup']:.2f}x (median of paired rounds), measured on {self.latency.get('provider')} at "
                     f"batch {self.latency.get('batch')}")
        return text


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def build_report(analysis: Analysis, selection: Selection, pruned: onnx.ModelProto, name: str,
                 method: str, target: dict, results: dict | None = None) -> Report:
    keep, _ = selection.class_arrays(analysis)
    total = max(analysis.total_macs, 1)
    groups = []
    for g in analysis.groups:
        idx = selection.kept.get(g.id, np.arange(g.channels))
        gam = selection.gamma.get(g.id, np.ones(len(idx)))
        r = (results or {}).get(g.id)
        # γ as the model holds it: the rewriter folds float32(γ) into the consumers (and the float64 value's last
        # digits vary with the BLAS thread count, docs/DESIGN.md, "The report")
        groups.append(GroupReport(g.id, g.channels, len(idx), [int(i) for i in idx],
                                  [float(np.float32(x)) for x in gam], g.frozen, g.reasons, g.producers, g.consumers,
                                  g.macs / total, None if g.frozen else (r.method if r else method),
                                  r.err_calib if r else None, r.err_holdout if r else None,
                                  list(r.curve) if r else [], r.note if r else "",
                                  list(r.candidates) if r else [], g.kind, g.unit))
    roots = analysis.class_of
    layers = [{"node": c.node, "op": c.op, "macs_before": c.macs,
               "macs_after": int(round(c.macs * np.prod([keep[roots[f]].mean() for f in c.factors])))}
              for c in analysis.costs]
    return Report(name, method, target, analysis.total_macs, macs(analysis, keep),
                  count_params(analysis.model), count_params(pruned), groups, layers=layers,
                  macs_unknown=[c.node for c in analysis.unknown_costs])


def _gated(name: str, rec: dict, did: str) -> str:
    """The summary line of a pass kept only if the held-out output loss falls (`pipeline.held_out.GatedRecord`)."""
    loss = (f", held-out output loss {rec['held_out_loss_before']:.4g} -> {rec['held_out_loss_after']:.4g}"
            if rec["held_out_loss_before"] is not None else "")
    return (f"{name} {'applied' if rec['applied'] else 'not applied'}: {did}{loss}"
            + (f" ({rec['why']})" if rec["why"] else "") + f", {rec['seconds']:.0f} s")
