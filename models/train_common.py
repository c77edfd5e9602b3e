"""Shared CPU train / ONNX-export / evaluate loop for the Fashion-MNIST models.

``fmnist_resnet.py`` and ``fmnist_mobilenet.py`` only define a network and call
:func:`main`.  The model takes raw images in [0, 1] (normalisation is the
model's first op, :class:`Normalize`), so the ONNX input matches the npz files.
"""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

try:
    from .fmnist_data import load_fmnist
except ImportError:  # run as a script from models/
    from fmnist_data import load_fmnist

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
CALIB_N = 512
NPZ_LIMIT = 2_000_000  # bytes; keep the committed npz files below 2 MB
SEED = 0


class Normalize(nn.Module):
    """(x - mean) / std with Fashion-MNIST statistics."""

    def forward(self, x):
        return (x - FMNIST_MEAN) / FMNIST_STD


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random 2-pixel shift (zero padded) and horizontal flip, per sample."""
    b = x.shape[0]
    xp = F.pad(x, (2, 2, 2, 2))
    dy, dx = torch.randint(0, 5, (2, b))
    i = torch.arange(28)
    rows = (dy[:, None] + i)[:, :, None]
    cols = (dx[:, None] + i)[:, None, :]
    x = xp[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = torch.rand(b) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, bs: int = 1000) -> np.ndarray:
    model.eval()
    return np.concatenate([model(torch.from_numpy(x[i:i + bs])).numpy()
                           for i in range(0, len(x), bs)])


def train(model, x, y, epochs, lr, bs=128, wd=5e-4, log=None):
    """SGD(momentum, nesterov) + OneCycle; returns wall seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                          nesterov=True, weight_decay=wd)
    steps = len(x) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * steps)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm, tot = torch.randperm(len(x)), 0.0
        for s in range(steps):
            idx = perm[s * bs:(s + 1) * bs]
            loss = F.cross_entropy(model(augment(xt[idx])), yt[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        msg = f"epoch {ep + 1}/{epochs} loss {tot / steps:.4f} ({time.time() - t0:.0f}s)"
        if log is not None:
            msg += f" test acc {log():.4f}"
        print(msg, flush=True)
    return time.time() - t0


def export_onnx(model: nn.Module, path: str, shape=(1, 1, 28, 28), opset=17):
    """TorchScript export with dynamic batch, input "input", output "logits"."""
    torch.onnx.export(model.eval(), torch.zeros(shape), path, dynamo=False,
                      opset_version=opset, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def ort_predict(path: str, x: np.ndarray, bs: int = 1000) -> np.ndarray:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"input": x[i:i + bs]})[0]
                           for i in range(0, len(x), bs)])


def _largest_k(x, y, path):
    """Write the first K test samples, K (multiple of 100) max with size < NPZ_LIMIT."""
    lo, hi = 100, len(x) // 100 * 100
    while lo < hi:  # binary search on compressed size
        mid = (lo + hi + 100) // 200 * 100
        np.savez_compressed(path, input=x[:mid], labels=y[:mid])
        lo, hi = (mid, hi) if os.path.getsize(path) < NPZ_LIMIT else (lo, mid - 100)
    np.savez_compressed(path, input=x[:lo], labels=y[:lo])
    return lo


def ensure_npz(out_dir, train_x, train_y, test_x, test_y):
    """Create fmnist_calib.npz / fmnist_test.npz unless present; return K."""
    calib, test = (os.path.join(out_dir, f"fmnist_{n}.npz") for n in ("calib", "test"))
    if not os.path.exists(calib):
        idx = np.sort(np.random.default_rng(SEED).choice(len(train_x), CALIB_N, replace=False))
        np.savez_compressed(calib, input=train_x[idx], labels=train_y[idx])
    if not os.path.exists(test):
        _largest_k(test_x, test_y, test)
    for p in (calib, test):
        print(f"{p}: {os.path.getsize(p)} bytes")
    with np.load(test) as z:
        return len(z["labels"])


def parse_args(doc, epochs):
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--lr", type=float, default=0.1, help="OneCycle max lr")
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads; 1 is much faster when other jobs load the CPU")
    return ap.parse_args()


def main(build_model, name, args):
    """Train ``build_model()`` on Fashion-MNIST, export ``<out_dir>/<name>.onnx``, evaluate."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    os.makedirs(args.out_dir, exist_ok=True)
    (xtr, ytr), (xte, yte) = load_fmnist("train"), load_fmnist("test")
    k = ensure_npz(args.out_dir, xtr, ytr, xte, yte)

    model = build_model()
    print(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")
    acc = lambda: float((predict(model, xte).argmax(1) == yte).mean())  # noqa: E731
    secs = train(model, xtr, ytr, args.epochs, args.lr, log=acc)
    print(f"training time {secs:.0f}s, torch test acc {acc():.4f}")

    path = os.path.join(args.out_dir, f"{name}.onnx")
    export_onnx(model, path)
    ref, got = predict(model, xte), ort_predict(path, xte)
    print(f"{path}: {os.path.getsize(path)} bytes")
    print(f"ORT vs torch max abs diff: {np.abs(ref - got).max():.3g}")
    print(f"ONNX test acc (10k): {(got.argmax(1) == yte).mean():.4f}")
    with np.load(os.path.join(args.out_dir, "fmnist_test.npz")) as z:
        xk, yk = z["input"], z["labels"]
    print(f"ONNX test acc (fmnist_test.npz, K={k}): "
          f"{(ort_predict(path, xk).argmax(1) == yk).mean():.4f}")
