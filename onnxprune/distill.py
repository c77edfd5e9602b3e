"""Label-free calibration distillation of a pruned model (docs/DESIGN.md, "Distillation").

After the layer-wise pruning, the pruned model's Conv/Gemm/MatMul weights and biases (`twin.trainable`)
are trained through its torch twin (on CUDA when present) to imitate the original model: the output loss
of the global methods (`--output-loss`; auto: the KL of the softmax outputs, original ‖ pruned, for a
classifier, the mean squared error of the outputs for an embedding or any other output) plus, weighted
by `distill_features`, the mean squared error of the consumers' outputs (the kept channels of every
Conv/Gemm/MatMul output the groups feed), each divided by the original's mean square there. No labels
and no training set: only the calibration data.

- Training samples: the calibration split only. From an image folder every epoch draws one *fresh*
  random-resized, flipped crop of every calibration image (crop indices after those the statistics used,
  seeded), so the distillation never sees the same sample twice; other sources are read as they are.
- Early stopping: after every epoch the output loss on the held-out split (whole held-out images, fixed
  crops) is measured; the weights with the lowest held-out loss are kept. An epoch that does not improve
  it goes back to the best weights and divides the learning rate by 3; the run stops after
  `distill_patience` such epochs in a row, at `distill_epochs`, or when `distill_time` seconds have
  passed. If no epoch beats the model as it came, the model is returned unchanged.
- The teacher runs in ONNX Runtime on the CPU, or as the original's twin on CUDA.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch

from .analysis import Analysis
from .calibration import Calibration, checked_batches
from .calibration.taps import Tap
from .options import DistillOptions, OptionError
from .pipeline.global_state import differs_reason, twin_difference
from .selection import Selection
from .selection.global_imitation import output_discrepancy
from .twin import Twin
from .twin.trainable import Trainable, default_device

log = logging.getLogger("onnxprune")


@dataclass
class DistillRecord:
    """What the distillation did (the report's `distill`)."""
    device: str
    output_loss: str = "kl"          # the output discrepancy trained and stopped on: kl or mse
    seconds: float = 0.0
    epochs: int = 0
    steps: int = 0
    train_samples: int = 0           # samples seen in training, all epochs
    held_out_samples: int = 0
    fresh_crops: bool = False
    held_out_loss_before: float = 0.0
    held_out_loss_best: float = 0.0
    best_epoch: int = 0              # 0: the model as it came was kept
    stopped: str = ""                # "patience", "epochs" or "time"
    applied: bool = False
    features: int = 0                # feature tensors in the loss
    history: list[dict] = field(default_factory=list)  # per epoch: train loss, held-out loss, seconds

    def to_dict(self) -> dict:
        return asdict(self)


def feature_channels(analysis: Analysis, selection: Selection, pruned: onnx.ModelProto
                     ) -> list[tuple[str, int, np.ndarray]]:
    """(tensor, channel axis, kept channel indices in the original) of every consumer output that the pruned
    model still has, for the feature loss: the pruned tensor is the original's kept channels, in order."""
    from .statistics import NotSupported, consumers_of
    keep, _ = selection.class_arrays(analysis)
    names = {o for n in pruned.graph.node for o in n.output}
    out, seen = [], set()
    for g in analysis.prunable:
        try:
            consumers = consumers_of(analysis, g)
        except NotSupported:
            continue
        for c in consumers:
            layout = analysis.layouts.get(c.output)
            if c.output in seen or c.output not in names or layout is None:
                continue
            seen.add(c.output)
            axes = [i for i, d in enumerate(layout.shape) if d > 1]
            if len(axes) != 1:
                continue
            labels = layout.reshape(-1)
            out.append((c.output, axes[0], np.flatnonzero(keep[analysis.class_of[labels]])))
    return out


class _Teacher:
    """The original model's outputs (and feature tensors) for a batch."""

    def __init__(self, model: onnx.ModelProto, names: list[str], device: torch.device):
        self.names, self.device = names, device
        self.twin = Twin(Analysis(model), device=device) if device.type == "cuda" else None
        self.tap = Tap(model, names) if self.twin is None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> list[torch.Tensor]:
        if self.twin is not None:
            with torch.no_grad():
                return list(self.twin(batch, outputs=self.names))
        assert self.tap is not None
        got = self.tap(batch)
        return [torch.from_numpy(np.asarray(got[n])) for n in self.names]


def _training_batches(cal: Calibration, epoch: int, batch_size: int, seed: int):
    """One epoch of training inputs: a fresh crop of every calibration image (shuffled), or the calibration
    split as it is for other sources."""
    if cal.images is None or cal.image_order is None:
        for _, batch in checked_batches(cal, batch_size, "calib"):
            yield batch
        return
    images, per = cal.images, cal.per_image
    n_images = cal.n_calib // per
    order = cal.image_order[:n_images]
    rng = np.random.default_rng((seed, 7919, epoch))
    chosen = order[rng.permutation(n_images)]
    name = images.input_name
    batch_size = cal.run_batch(batch_size)
    whole = n_images - n_images % batch_size if cal.fixed_batch else n_images  # a fixed batch runs whole batches
    for i in range(0, whole, batch_size):
        # crop index per + epoch: never one the statistics used (0 .. per - 1), new every epoch
        pixels = np.stack([images.crop(int(j), per + epoch, cal.seed) for j in chosen[i:i + batch_size]])
        yield {name: images.to_input(pixels)}


def distill(original: onnx.ModelProto, pruned: onnx.ModelProto, cal: Calibration, options: DistillOptions,
            features: list[tuple[str, int, np.ndarray]], output_loss: str = "kl", batch_size: int = 32,
            seed: int = 0, device: str | torch.device | None = None, quiet: bool = True
            ) -> tuple[onnx.ModelProto, DistillRecord]:
    """Distil `original` into `pruned` on `cal` with the output discrepancy `output_loss` ("kl" or "mse"; see the
    module docstring); returns the model and the record."""
    if cal.n_holdout == 0:
        raise OptionError("distill", True, "needs held-out calibration samples for early stopping "
                          "(holdout > 0 and at least 10 samples)")
    t0 = time.perf_counter()
    dev = torch.device(device or default_device())
    out_name = pruned.graph.output[0].name
    feats = features if options.distill_features > 0 else []
    try:  # the twins are built, and run once: an op (setting) they do not know fails here
        tr = Trainable(pruned, dev, torch.float32)
        student = tr.twin
        teacher = _Teacher(original, [original.graph.output[0].name] + [n for n, _, _ in feats], dev)
        held_teacher = _Teacher(original, [original.graph.output[0].name], dev)
        held = [(b, held_teacher(b)[0].to(dev)) for _, b in checked_batches(cal, batch_size, "holdout")]
        with torch.no_grad():
            first = student(held[0][0])[0] if held else None
    except NotImplementedError as exc:
        raise OptionError("distill", True, f"{exc} (the distillation trains through the torch twin)") from None
    if first is not None:  # the student computes what ONNX Runtime computes on the pruned model
        worst, tol = twin_difference(pruned, [(held[0][0], first)])
        if not worst <= tol:
            raise OptionError("distill", True, differs_reason(worst, tol))
    rec = DistillRecord(device=str(dev), output_loss=output_loss, fresh_crops=cal.images is not None,
                        features=len(feats))
    rec.held_out_samples = sum(len(t) for _, t in held)
    index = {name: (axis, torch.as_tensor(idx, device=dev)) for name, axis, idx in feats}

    def discrepancy(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
        return output_discrepancy(student_out, teacher_out, output_loss, torch.float32)

    def held_out_loss() -> float:
        student.eval()
        with torch.no_grad():
            return sum(float(discrepancy(student(b)[0], t)) for b, t in held) / max(rec.held_out_samples, 1)

    best = held_out_loss()
    rec.held_out_loss_before = rec.held_out_loss_best = best
    best_state = {k: p.detach().clone() for k, p in tr.params.items()}
    lr = options.distill_lr
    opt = torch.optim.Adam(list(tr.params.values()), lr=lr)
    since_best, rec.stopped = 0, "epochs"
    budget = options.distill_time
    for epoch in range(options.distill_epochs):
        student.train()
        total, n_seen, out_of_time = 0.0, 0, False
        for batch in _training_batches(cal, epoch, batch_size, seed):
            targets = teacher(batch)
            outs = student(batch, outputs=[out_name] + [n for n, _, _ in feats])
            n = len(outs[0])
            loss = discrepancy(outs[0], targets[0].to(dev)) / n
            if feats:
                mse = []
                for (name, _, _), s, t in zip(feats, outs[1:], targets[1:]):
                    axis, idx = index[name]
                    t = t.to(dev).index_select(axis, idx)
                    mse.append(((s.float() - t) ** 2).mean() / (t * t).mean().clamp_min(1e-12))
                loss = loss + options.distill_features * torch.stack(mse).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * n
            n_seen += n
            rec.steps += 1
            if time.perf_counter() - t0 > budget:
                out_of_time = True
                break
        rec.train_samples += n_seen
        value = held_out_loss()
        rec.epochs = epoch + 1
        rec.history.append({"epoch": epoch + 1, "train_loss": total / max(n_seen, 1), "held_out_loss": value,
                            "lr": lr, "seconds": time.perf_counter() - t0})
        if not quiet:
            log.info("distill epoch %d: train %.4f held-out %s %.4g (%.0fs)", epoch + 1, total / max(n_seen, 1),
                     output_loss, value, time.perf_counter() - t0)
        if value < best:
            best, since_best, rec.best_epoch = value, 0, epoch + 1
            best_state = {k: p.detach().clone() for k, p in tr.params.items()}
        else:  # back to the best state with a third of the step (a rate chosen on held-out images, not by hand)
            since_best += 1
            lr /= 3
            with torch.no_grad():
                for k, p in tr.params.items():
                    p.copy_(best_state[k])
            opt = torch.optim.Adam(list(tr.params.values()), lr=lr)
        if out_of_time:
            rec.stopped = "time"
            break
        if since_best >= options.distill_patience:
            rec.stopped = "patience"
            break
    rec.held_out_loss_best = best
    rec.seconds = time.perf_counter() - t0
    if rec.best_epoch == 0:
        return pruned, rec
    with torch.no_grad():
        for k, p in tr.params.items():
            p.copy_(best_state[k])
    rec.applied = True
    return tr.write_back(), rec
