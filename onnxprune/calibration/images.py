"""Image folders as calibration data: decoded one at a time, resized, centre-cropped, normalised."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..options import OptionError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": dict(resize=256, size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "none": dict(resize=None, size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))}


def image_items(files: list[Path], input_name: str, shape: tuple, preprocess: str, mean=None, std=None,
                 size=None) -> Iterator[dict[str, np.ndarray]]:
    """The images decoded one at a time as input dicts of batch 1 (`spill` writes them to disk, so an
    image folder is never held in memory whole)."""
    from PIL import Image
    if preprocess not in PRESETS:
        raise OptionError("preprocess", preprocess, f"choose from {', '.join(PRESETS)}")
    p = dict(PRESETS[preprocess])
    if len(shape) != 4:
        raise UserError(f"image calibration needs a model input of rank 4, '{input_name}' has rank {len(shape)}")
    nchw = shape[1] in (1, 3)
    h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    channels = shape[1] if nchw else shape[3]
    size = size or h or w or p["size"]  # the model's input size wins over the preset's
    if size is None:
        raise OptionError("image_size", None, "the model's input size is symbolic: give the image side")
    resize = round(size * p["resize"] / p["size"]) if p["resize"] else size  # imagenet: 256 -> 224 crop ratio
    mean = np.asarray(mean or p["mean"], np.float32)[:channels]
    std = np.asarray(std or p["std"], np.float32)[:channels]
    for f in files:
        try:
            img = Image.open(f).convert("RGB" if channels == 3 else "L")
        except Exception as exc:
            raise UserError(f"{f}: not a readable image ({type(exc).__name__})") from None
        scale = resize / min(img.size)
        img = img.resize((max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))),
                         Image.Resampling.BILINEAR)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255.0
        arr = arr.reshape(size, size, channels)
        arr = (arr - mean) / std
        yield {input_name: (arr.transpose(2, 0, 1) if nchw else arr)[None]}
