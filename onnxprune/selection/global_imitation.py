"""Global imitation: choose a group's channels by their effect on the network's output.

A torch twin of the graph (`twin.Twin`) computes the masked reference for any per-channel gates, so
the output loss (KL between the original's and the gated model's softmax, or MSE of the outputs)
and its gradient with respect to the gates are available:

- `taylor_select` (greedy-taylor): forward selection in a few rounds; each round one backward pass
  over the global calibration subset scores every channel at once by the first-order change in
  output loss when its gate opens (0 -> 1), and adds the best; γ is then re-fitted by least squares
  on the local statistics (cheap and exact for the consumers).
- `exact_select` (greedy-global): one forward per candidate (batched over the subset) at every
  step; affordable for small groups only.
- `taylor_importance`: Molchanov et al. (2017): |Σ gate gradient| of the cross-entropy against the
  original model's predictions, all gates open, no re-weighting (a baseline).
"""
from __future__ import annotations

import numpy as np
import torch

from ..calibration import Calibration, checked_batches


def output_discrepancy(out: torch.Tensor, ref: torch.Tensor, kind: str, dtype=torch.float64) -> torch.Tensor:
    """Sum over the batch of the output discrepancy of `out` against the reference `ref`: "mse", each sample's
    mean squared difference; "kl", KL(softmax ref ‖ softmax out) over each sample's flattened outputs."""
    out, ref = out.reshape(len(out), -1).to(dtype), ref.reshape(len(ref), -1).to(dtype)
    if kind == "mse":
        return ((out - ref) ** 2).mean(1).sum()
    lp = torch.log_softmax(ref, 1)
    return (lp.exp() * (lp - torch.log_softmax(out, 1))).sum()


class OutputLoss:
    """Output discrepancy of a gated twin against the original model on a calibration subset."""

    def __init__(self, cal: Calibration, kind: str, samples: int, batch_size: int, device: str, split: str):
        self.kind, self.device = kind, torch.device(device)
        self.batches = []   # (inputs, reference outputs) — the subset is small and reused every round
        n = 0
        for _, batch in checked_batches(cal, batch_size, split):
            take = min(len(next(iter(batch.values()))), samples - n)
            if take <= 0:
                break
            self.batches.append({k: torch.from_numpy(np.array(v[:take])).to(self.device)
                                 for k, v in batch.items()})
            n += take
        self.samples = n
        self.reference: list[torch.Tensor] = []

    def set_reference(self, twin) -> None:
        with torch.no_grad():
            self.reference = [twin(b)[0].detach() for b in self.batches]

    def _loss(self, out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return output_discrepancy(out, ref, self.kind)

    def value(self, twin, gates: torch.Tensor) -> float:
        with torch.no_grad():
            total = sum(float(self._loss(twin(b, gates)[0], r)) for b, r in zip(self.batches, self.reference))
            return total / max(self.samples, 1)

    def gradient(self, twin, gates: torch.Tensor, labels_loss: bool = False) -> tuple[float, np.ndarray]:
        g = gates.detach().clone().requires_grad_(True)
        total = 0.0
        for b, r in zip(self.batches, self.reference):
            out = twin(b, g)[0]
            if labels_loss:  # cross-entropy against the original's top-1 (Molchanov's task-loss proxy)
                flat = out.reshape(len(out), -1)
                loss = torch.nn.functional.cross_entropy(flat.double(), r.reshape(len(r), -1).argmax(1),
                                                         reduction="sum")
            else:
                loss = self._loss(out, r)
            loss.backward()
            total += float(loss.detach())
        assert g.grad is not None
        return total / max(self.samples, 1), g.grad.detach().cpu().numpy() / max(self.samples, 1)


def taylor_select(twin, loss: OutputLoss, gates: torch.Tensor, classes: np.ndarray, k: int, quotas=None,
                  blocks=None, rounds: int = 4) -> tuple[list[int], int]:
    """Forward selection by gate gradients; returns (chosen channel indices, backward passes used)."""
    gates = gates.clone()
    gates[torch.from_numpy(classes)] = 0.0
    chosen: list[int] = []
    passes = 0
    for r in range(rounds):
        want = int(np.ceil(k * (r + 1) / rounds))
        if want <= len(chosen):
            continue
        _, grad = loss.gradient(twin, gates)
        passes += 1
        score = grad[classes]               # d loss / d gate: opening a gate changes the loss by ≈ score
        order = [int(i) for i in np.argsort(score, kind="stable") if int(i) not in chosen]
        for i in order:
            if len(chosen) >= want:
                break
            if quotas is not None and np.sum(blocks[chosen] == blocks[i]) >= quotas[blocks[i]]:
                continue
            chosen.append(i)
        gates[torch.from_numpy(classes[chosen])] = 1.0
    return sorted(chosen), passes


def exact_select(twin, loss: OutputLoss, gates: torch.Tensor, classes: np.ndarray, k: int, quotas=None,
                 blocks=None) -> list[int]:
    """Greedy forward selection by the exact output loss of every candidate (one forward each)."""
    gates = gates.clone()
    gates[torch.from_numpy(classes)] = 0.0
    chosen: list[int] = []
    while len(chosen) < k:
        best, best_loss = None, np.inf
        for i in range(len(classes)):
            if i in chosen or (quotas is not None and np.sum(blocks[chosen] == blocks[i]) >= quotas[blocks[i]]):
                continue
            gates[int(classes[i])] = 1.0
            value = loss.value(twin, gates)
            gates[int(classes[i])] = 0.0
            if value < best_loss:
                best, best_loss = i, value
        if best is None:
            break
        chosen.append(best)
        gates[int(classes[best])] = 1.0
    return sorted(chosen)


def taylor_importance(twin, loss: OutputLoss, gates: torch.Tensor, classes: np.ndarray) -> np.ndarray:
    """|d CE / d gate| per channel with every gate as it is (Molchanov et al., 2017)."""
    _, grad = loss.gradient(twin, gates, labels_loss=True)
    return np.abs(grad[classes] * gates[torch.from_numpy(classes)].cpu().numpy())
