"""The one preprocessing both engines see: decode, augment (NumPy/PIL) and normalize.

Every random choice comes from a generator the caller derives from (seed, epoch, example
index), so an example's augmentation never depends on batch size, host count, thread
scheduling or engine. Images stay uint8 RGB until `normalize`, the only place pixel
statistics are applied.

Two policies, chosen per source by its image size (`is_small_image`):
- ImageNet-style: train = random resized crop (Inception / timm) + optional flip;
  eval = resize the shorter side to image_size / 0.875, center crop.
- small images (digits, MNIST, CIFAR): resize to image_size; train adds a zero-padded random
  crop (pad image_size / 8) + optional flip.
Resampling is PIL bilinear (antialiased when downscaling, as torchvision/timm's PIL path).
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

# ImageNet RGB statistics on the 0-255 scale (torchvision / timm / MindSpore model zoo).
NORMALIZE_MEAN = np.array([0.485 * 255, 0.456 * 255, 0.406 * 255], dtype=np.float32)
NORMALIZE_STD = np.array([0.229 * 255, 0.224 * 255, 0.225 * 255], dtype=np.float32)

EVAL_CROP_FRACTION = 0.875  # 224 / 256
CROP_AREA = (0.08, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
SMALL_IMAGE_MAX_SIDE = 64  # sources whose images are smaller than this use the small-image policy
# Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the crop is downscaled at least that much
# anyway (PIL's `draft`); deterministic, and 2-4x faster on ImageNet-size JPEGs.
JPEG_DRAFT = True


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 (x - mean) / std."""
    if images.shape[-1] != 3:
        raise ValueError(f"normalize expects RGB images with a last axis of 3, got shape {images.shape}")
    return (images.astype(np.float32) - NORMALIZE_MEAN) / NORMALIZE_STD


def is_small_image(height: int, width: int) -> bool:
    return max(height, width) < SMALL_IMAGE_MAX_SIDE


# ----------------------------------------------------------------------------- decoding


def open_image(record) -> Image.Image:
    """A source record (uint8 array HW / HWC, encoded bytes, or a file path) as a lazy PIL image."""
    if isinstance(record, np.ndarray):
        array = record[..., 0] if record.ndim == 3 and record.shape[-1] == 1 else record
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8))
    if isinstance(record, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(record))
    if isinstance(record, (str, os.PathLike)):
        with open(record, "rb") as f:  # read whole: no file handle outlives the call
            return Image.open(io.BytesIO(f.read()))
    raise TypeError(f"cannot decode an image record of type {type(record).__name__}")


def _draft(image: Image.Image, needed_width: int, needed_height: int) -> tuple:
    """Decode a JPEG at the smallest DCT scale still >= the needed size; return (x, y) scales."""
    if not JPEG_DRAFT or image.format != "JPEG":
        return 1.0, 1.0
    width, height = image.size
    image.draft("RGB", (max(1, needed_width), max(1, needed_height)))
    return image.size[0] / width, image.size[1] / height


def to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


# ----------------------------------------------------------------------------- geometry


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            area=CROP_AREA, aspect=CROP_ASPECT, attempts=CROP_ATTEMPTS) -> tuple:
    """(left, top, crop_width, crop_height): Inception's distorted crop as torchvision/timm do it.

    Up to `attempts` draws of (area fraction, log-uniform aspect); if none fits, a center crop
    of the whole image with its aspect clamped to the allowed range."""
    total = width * height
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    for _ in range(attempts):
        target = total * rng.uniform(area[0], area[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < aspect[0]:
        w, h = width, int(round(width / aspect[0]))
    elif in_ratio > aspect[1]:
        w, h = int(round(height * aspect[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, size: int) -> tuple:
    """(left, top, right, bottom) of a centered size x size window (torchvision's rounding)."""
    left = int(round((width - size) / 2.0))
    top = int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def _maybe_flip(array: np.ndarray, flip: bool, rng: np.random.Generator) -> np.ndarray:
    if flip and rng.random() < 0.5:
        return array[:, ::-1]
    return array


# ----------------------------------------------------------------------------- ImageNet-style


def imagenet_train(image: Image.Image, size: int, rng: np.random.Generator, flip: bool) -> np.ndarray:
    width, height = image.size
    left, top, w, h = random_resized_crop_box(width, height, rng)
    sx, sy = _draft(image, math.ceil(width * size / w), math.ceil(height * size / h))
    box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
    out = to_rgb(image).resize((size, size), Image.BILINEAR, box=box)
    return _maybe_flip(np.asarray(out), flip, rng)


def imagenet_eval(image: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to size / 0.875 (256 for 224), then the central size x size."""
    resize_to = int(round(size / EVAL_CROP_FRACTION))
    width, height = image.size
    factor = resize_to / min(width, height)
    target = (max(size, int(round(width * factor))), max(size, int(round(height * factor))))
    _draft(image, target[0], target[1])
    image = to_rgb(image)
    if image.size != target:
        image = image.resize(target, Image.BILINEAR)
    return np.asarray(image.crop(center_crop_box(*target, size)))


# ----------------------------------------------------------------------------- small images


def _resize_square(image: Image.Image, size: int) -> np.ndarray:
    image = to_rgb(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def small_train(image: Image.Image, size: int, rng: np.random.Generator, flip: bool) -> np.ndarray:
    """Resize to size, then a size x size window of the image zero-padded by size // 8."""
    array = _resize_square(image, size)
    pad = max(1, size // 8)
    dy, dx = (int(v) - pad for v in rng.integers(0, 2 * pad + 1, size=2))
    out = np.zeros_like(array)
    # out[y, x] = array[y + dy, x + dx] where that lies inside the image, else 0
    out[max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)] = \
        array[max(0, dy):size - max(0, -dy), max(0, dx):size - max(0, -dx)]
    return _maybe_flip(out, flip, rng)


def small_eval(image: Image.Image, size: int) -> np.ndarray:
    return _resize_square(image, size)


# ----------------------------------------------------------------------------- entry point


def preprocess(record, *, size: int, train: bool, small: bool, flip: bool,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Decode one record and apply the policy; returns uint8 (size, size, 3)."""
    image = open_image(record)
    if train:
        if rng is None:
            raise ValueError("training preprocessing needs a per-example random generator")
        out = small_train(image, size, rng, flip) if small else imagenet_train(image, size, rng, flip)
    else:
        out = small_eval(image, size) if small else imagenet_eval(image, size)
    return np.ascontiguousarray(out)
