"""Fashion-MNIST loader (gzip + numpy only).

Reads the IDX files installed by the ``dataset-fashion-mnist`` package under
``/usr/share/datasets/fashion-mnist`` (override with ``$FMNIST_DIR``).
"""
import gzip
import os

import numpy as np

DATA_DIR = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}


def _read_gz(path: str, header: int) -> np.ndarray:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Fashion-MNIST file not found: {path}\n"
            "Install it with: apt-get install -y dataset-fashion-mnist "
            "(or set FMNIST_DIR to a folder holding the *-ubyte.gz files)")
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


def load_fmnist(split: str):
    """Return ``(images, labels)`` for ``split`` in {"train", "test"}.

    images: float32 [N, 1, 28, 28] scaled to [0, 1]; labels: int64 [N].
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    p = os.path.join(DATA_DIR, _PREFIX[split])
    images = _read_gz(p + "-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = _read_gz(p + "-labels-idx1-ubyte.gz", 8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{p}: {len(images)} images but {len(labels)} labels")
    return images.astype(np.float32) / 255.0, labels
