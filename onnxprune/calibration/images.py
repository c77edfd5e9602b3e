"""Image folders as calibration data: decoded one at a time, resized, cropped, normalised
(docs/DESIGN.md, "Calibration").

Every image gives its centre crop (the preset's resize and crop) and, with `augment=N`, N more
samples: random-resized crops with random horizontal flips, drawn from a generator seeded by
(seed, image index, crop index), so that the same run sees the same crops in every pass whatever the
batching. Crops are written once to disk as 8-bit pixels (what the decoder gives, so nothing is lost)
and normalised batch by batch when they are read (`ImageStream`): 500 images with `augment=7` are
4000 samples and 600 MB of disk, not a 2.4 GB float file. `ImageSet.crop` draws any further crop of
any image (the distillation's fresh crops every epoch).
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..options import OptionError
from .npy_stream import NpyStream

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": dict(resize=256, size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "none": dict(resize=None, size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))}
# random-resized crops: share of the resized image's area and aspect ratio (torchvision's algorithm;
# the area is at least a quarter, milder than training's 8%, so that crops stay like whole photos)
CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


class ImageSet:
    """Image files and the preprocessing that makes model inputs of them."""

    def __init__(self, files: list[Path], input_name: str, shape: tuple, preprocess: str, mean=None, std=None,
                 size=None):
        if preprocess not in PRESETS:
            raise OptionError("preprocess", preprocess, f"choose from {', '.join(PRESETS)}")
        p = dict(PRESETS[preprocess])
        if len(shape) != 4:
            raise UserError(f"image calibration needs a model input of rank 4, '{input_name}' has rank {len(shape)}")
        self.files, self.input_name = list(files), input_name
        self.nchw = shape[1] in (1, 3)
        h, w = (shape[2], shape[3]) if self.nchw else (shape[1], shape[2])
        self.channels = int(shape[1] if self.nchw else shape[3])
        size = size or h or w or p["size"]  # the model's input size wins over the preset's
        if size is None:
            raise OptionError("image_size", None, "the model's input size is symbolic: give the image side")
        self.size = int(size)
        # imagenet: 256 -> 224 crop ratio
        self.resize = round(self.size * p["resize"] / p["size"]) if p["resize"] else self.size
        self.mean = np.asarray(mean or p["mean"], np.float32)[:self.channels]
        self.std = np.asarray(std or p["std"], np.float32)[:self.channels]

    def __len__(self) -> int:
        return len(self.files)

    def resized(self, j: int):
        """Image j decoded and resized (shorter side to the preset's resize)."""
        from PIL import Image
        f = self.files[j]
        try:
            img = Image.open(f).convert("RGB" if self.channels == 3 else "L")
        except Exception as exc:
            raise UserError(f"{f}: not a readable image ({type(exc).__name__})") from None
        scale = self.resize / min(img.size)
        return img.resize((max(self.size, round(img.size[0] * scale)), max(self.size, round(img.size[1] * scale))),
                          Image.Resampling.BILINEAR)

    def crop(self, j: int, c: int, seed: int, img=None) -> np.ndarray:
        """Crop c of image j as 8-bit pixels (size, size, channels): c = 0 is the centre crop, c >= 1 a
        random-resized crop, flipped with probability 1/2, drawn from a generator seeded by (seed, j, c)."""
        from PIL import Image
        img = self.resized(j) if img is None else img
        s = self.size
        if c == 0:
            left, top = (img.size[0] - s) // 2, (img.size[1] - s) // 2
            out = img.crop((left, top, left + s, top + s))
        else:
            rng = np.random.default_rng((seed, j, c))
            box = _random_box(img.size, rng)
            out = img.resize((s, s), Image.Resampling.BILINEAR, box=box)
            if rng.random() < 0.5:
                out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(out, np.uint8).reshape(s, s, self.channels)

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """8-bit pixels [N, size, size, channels] -> normalised float32 inputs in the model's layout."""
        import torch  # vectorised and threaded: numpy spent 20 ms per batch of 32 ImageNet crops here
        t = torch.from_numpy(np.array(pixels, dtype=np.uint8)).to(torch.float32) / 255.0
        t = (t - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)
        return np.ascontiguousarray((t.permute(0, 3, 1, 2) if self.nchw else t).numpy())

    def input_shape(self) -> tuple[int, int, int]:
        s, ch = self.size, self.channels
        return (ch, s, s) if self.nchw else (s, s, ch)


def _random_box(wh: tuple[int, int], rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (10 tries, then the largest centred box of a valid ratio)."""
    width, height = wh
    area = width * height
    log_ratio = np.log(CROP_RATIO)
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = float(np.exp(rng.uniform(*log_ratio)))
        w = int(round(np.sqrt(target * ratio)))
        h = int(round(np.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        h, w = height, int(round(height * CROP_RATIO[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def holdout_images(n: int, holdout: float, samples: int) -> np.ndarray:
    """Indices of the images held out: round(n · holdout) of them, spread evenly over the sorted
    files (none when the whole set is under 10 samples, as for every source)."""
    m = int(round(n * holdout)) if samples >= 10 else 0
    return np.array([int((k + 0.5) * n / m) for k in range(m)], dtype=np.int64) if m else np.zeros(0, np.int64)


class ImageStream(NpyStream):
    """Crops stored as 8-bit pixels in a `.npy` file, read as normalised float32 model inputs."""

    def __init__(self, path: Path, images: ImageSet, what: str):
        self.images = images
        super().__init__(lambda: open(path, "rb"), what)
        self.pixel_shape = self.shape
        self.shape = (self.pixel_shape[0],) + images.input_shape()
        self.dtype = np.dtype(np.float32)

    def _stored(self) -> tuple[tuple, np.dtype]:
        return tuple(self.pixel_shape), np.dtype(np.uint8)

    def _convert(self, block: np.ndarray) -> np.ndarray:
        return self.images.to_input(block)


def spill_images(images: ImageSet, order: np.ndarray, per_image: int, seed: int, what: str
                 ) -> tuple[ImageStream, tempfile.TemporaryDirectory]:
    """Write the crops of the images in `order` (per_image each: the centre crop, then per_image - 1
    random-resized crops) to one 8-bit `.npy` file, image by image; the stream reads them back."""
    tmp = tempfile.TemporaryDirectory(prefix="onnxprune-calib-")
    path = Path(tmp.name) / "images.npy"
    s, ch = images.size, images.channels
    with open(path, "wb") as out:
        np.lib.format.write_array_header_2_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                   "fortran_order": False,
                                                   "shape": (len(order) * per_image, s, s, ch)})
        for j in order.tolist():
            img = images.resized(j)
            for c in range(per_image):
                out.write(np.ascontiguousarray(images.crop(j, c, seed, img)).tobytes())
    return ImageStream(path, images, what), tmp


def image_items(files: list[Path], input_name: str, shape: tuple, preprocess: str, mean=None, std=None,
                size=None) -> Iterator[dict[str, np.ndarray]]:
    """The centre crops of the images, decoded one at a time, as input dicts of batch 1."""
    images = ImageSet(files, input_name, shape, preprocess, mean, std, size)
    for j in range(len(images)):
        yield {input_name: images.to_input(images.crop(j, 0, 0)[None])}
