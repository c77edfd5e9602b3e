"""Short supervised finetune of an ONNX model (typically a pruned one) through its torch twin.

    tuned = finetune(pruned, x_train, y_train, epochs=1, lr=0.01)

`finetune` builds a `Twin` (onnxprune/twin.py) of the model, turns the floating-point weight
constants of Conv, ConvTranspose, Gemm and MatMul nodes (weights and biases, plus the constant
operand of an Add that directly follows a MatMul, its bias) into trainable parameters, trains
them with the cross-entropy of the first graph output against integer labels, and writes the
trained values back into the model it was given. The graph is unchanged: same nodes, names,
shapes, dtypes, opset and metadata; only those weight values change. Everything else
(BatchNormalization statistics and affine, per-channel Mul/Add constants, shape constants) is
frozen; BatchNormalization runs in inference mode and Dropout is the identity.

Optimiser (documented defaults): SGD with momentum 0.9 (Nesterov), no weight decay, and a cosine
learning-rate decay from `lr` to 0 over all steps, no warm-up; or Adam (`optimizer="adam"`, same
schedule). Batches are drawn by a seeded permutation per epoch (torch.Generator(seed)); the last
incomplete batch is dropped unless it is the only one. No data augmentation: pass augmented data,
or an `augment` callable (a batch of inputs -> the same, applied to every input of a step).

The model may store a weight as an initializer, as a `Constant` node, or behind `Identity` nodes
(exporters deduplicate equal initializers this way); the analyzer's normalised graph turns the
last two into initializers named after the node outputs. Every trainable tensor of the normalised
graph is traced back to its storage in the original model, and tensors sharing one storage share
one parameter, so the written-back model stays consistent. Initializers that are also graph inputs
(overridable at run time) are not trained.

The twin computes in float32 (`dtype`) whatever the model's float type; values are cast back to
each tensor's own dtype when written.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .errors import UserError
from .graph.inputs import fixed_batch
from .twin.trainable import Trainable as _Trainable
from .twin.trainable import default_device, trainable_tensors

__all__ = ["default_device", "finetune", "trainable_tensors"]

log = logging.getLogger("onnxprune")

def _as_inputs(x, input_names: list[str]) -> dict[str, np.ndarray]:
    if isinstance(x, dict):
        missing = [n for n in input_names if n not in x]
        if missing:
            raise UserError(f"finetune: missing input(s) {missing}")
        return {n: np.asarray(x[n]) for n in input_names}
    if len(input_names) != 1:
        raise UserError(f"finetune: the model has {len(input_names)} inputs; pass a dict of arrays")
    return {input_names[0]: np.asarray(x)}


def finetune(model: onnx.ModelProto, x, y, epochs: int = 1, lr: float = 0.01, batch_size: int = 64,
             seed: int = 0, *, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
             schedule: str = "cosine", device: str | torch.device | None = None,
             dtype: torch.dtype = torch.float32, output: int = 0, augment: Callable | None = None,
             label_smoothing: float = 0.0, losses: list | None = None, return_twin: bool = False):
    """Finetune `model`'s Conv/Gemm/MatMul weights and biases on (x, y) with cross-entropy.

    x: an array (single-input models) or a dict input name -> array, batch first; y: int class
    indices [N]. The logits are graph output `output`, reshaped to [batch, classes].
    optimizer: "sgd" (momentum, Nesterov) or "adam"; schedule: "cosine" (to 0) or "constant".
    device: None = CUDA when available, else CPU. `losses`: if a list, each step's training loss is
    appended. Returns the model with the trained weights (a copy; `model` is not modified), or
    (model, twin) with return_twin=True (the twin holds the trained parameters, in eval use).
    """
    if epochs < 0 or lr < 0 or batch_size < 1:
        raise UserError("finetune: epochs and lr must be >= 0 and batch_size >= 1")
    device = torch.device(device or default_device())
    try:
        tr = _Trainable(model, device, dtype)
    except NotImplementedError as exc:
        raise UserError(f"finetune: {exc} (finetuning trains through the torch twin)") from None
    twin = tr.twin
    inputs = _as_inputs(x, twin.input_names)
    labels = torch.as_tensor(np.asarray(y), dtype=torch.long)
    n = len(labels)
    if any(len(v) != n for v in inputs.values()):
        raise UserError("finetune: inputs and labels differ in length")
    fixed = fixed_batch(model)  # an export without a dynamic batch axis trains on batches of exactly its size
    if fixed is not None and fixed != batch_size:
        if n < fixed:
            raise UserError(f"finetune: the model's fixed batch dimension is {fixed}; only {n} samples given")
        log.info("finetune: the model's fixed batch dimension %d replaces batch_size %d", fixed, batch_size)
        batch_size = fixed
    params = list(tr.params.values())
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise UserError(f"finetune: optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    steps_per_epoch = max(1, n // batch_size)
    total = max(1, steps_per_epoch * epochs)
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    elif schedule == "constant":
        sched = None
    else:
        raise UserError(f"finetune: schedule must be 'cosine' or 'constant', got {schedule!r}")
    gen = torch.Generator().manual_seed(seed)
    xs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    t0 = time.perf_counter()
    twin.train()
    # the global RNG is seeded (and restored afterwards) for `augment`, which may draw from it
    cuda_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_ids):
        torch.manual_seed(seed)
        _train(twin, xs, labels, opt, sched, gen, epochs, steps_per_epoch, batch_size, output, augment,
               label_smoothing, losses, device, t0)
    twin.eval()
    out = tr.write_back()
    return (out, twin) if return_twin else out


def _train(twin, xs, labels, opt, sched, gen, epochs, steps_per_epoch, batch_size, output, augment,
           label_smoothing, losses, device, t0):
    n = len(labels)
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        tot = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            feed = {k: v[idx] for k, v in xs.items()}
            if augment is not None:
                feed = {k: augment(v) for k, v in feed.items()}
            logits = twin(feed)[output]
            loss = F.cross_entropy(logits.reshape(len(idx), -1).float(), labels[idx].to(device),
                                   label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            value = float(loss.detach())
            tot += value
            if losses is not None:
                losses.append(value)
        log.info("finetune epoch %d/%d: loss %.4f (%.0fs, %s)", ep + 1, epochs, tot / steps_per_epoch,
                 time.perf_counter() - t0, device)
