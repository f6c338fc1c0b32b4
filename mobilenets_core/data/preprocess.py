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
Resampling: the training crop is OpenCV's bit-exact bilinear (as tf.data and MindSpore's
RandomCropDecodeResize: no antialiasing); everything else is PIL bilinear (antialiased when
downscaling, as torchvision/timm's PIL path).

Files as they come: every mode is converted to 8-bit RGB (grayscale, palette, RGBA and LA drop
alpha, CMYK, 16-bit grayscale scaled by 1/257); a truncated JPEG or PNG decodes as far as its data
goes (the rest gray, as PIL fills it); a photo's EXIF orientation is applied (a phone's portrait
shot is read upright); anything that cannot be decoded at all raises `BadImage`, and an image of
more than `max_pixels` (config dataset.max_image_pixels) raises `TooLarge` before it is decoded;
the dataset turns either into a placeholder and counts it (dataset.py). A `DecodeReport` passed
in counts all of this for the log.
"""
from __future__ import annotations

import collections
import io
import math
import os
import threading

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

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
# The most pixels an image may have to be decoded (dataset.max_image_pixels): the size at which PIL
# itself refuses a file as a decompression bomb. PIL's own check is off (it warns half-way and
# raises an error the user cannot tell from corruption); `_decode` applies this one, by name.
MAX_IMAGE_PIXELS = 2 * 89_478_485
Image.MAX_IMAGE_PIXELS = None
EXIF_ORIENTATION = 0x0112  # 1 = upright; 2-8 = mirrored and/or rotated
cv2.setNumThreads(1)  # one core per decoding worker: OpenCV's own thread pool would only compete


class BadImage(ValueError):
    """A record that is not a decodable image (not an image file, corrupt beyond its header, empty)."""


class TooLarge(BadImage):
    """A valid image with more pixels than may be decoded safely; skipped, never called corrupt."""


class DecodeReport:
    """Thread-safe counts of what decoding had to repair: converted modes, truncated and bad files."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.converted = collections.Counter()  # source mode -> images converted to RGB
            self.truncated = []  # descriptions of truncated files decoded partially
            self.bad = []  # (description, reason) of records replaced by a placeholder
            self.too_large = []  # (description, "WxH") of images above the pixel limit, replaced likewise
            self.rotated = 0  # images turned upright by their EXIF orientation

    def add_converted(self, mode: str) -> None:
        with self._lock:
            self.converted[mode] += 1

    def add_truncated(self, what: str) -> None:
        with self._lock:
            self.truncated.append(what)

    def add_bad(self, what: str, reason: str) -> None:
        with self._lock:
            self.bad.append((what, reason))

    def add_too_large(self, what: str, reason: str) -> None:
        with self._lock:
            self.too_large.append((what, reason))

    def add_rotated(self) -> None:
        with self._lock:
            self.rotated += 1

    def counts(self) -> dict:
        """What was counted, as plain data (a worker process sends it back to `merge`)."""
        with self._lock:
            return {"converted": dict(self.converted), "truncated": list(self.truncated), "bad": list(self.bad),
                    "too_large": list(self.too_large), "rotated": self.rotated}

    def merge(self, counts: dict) -> None:
        with self._lock:
            self.converted.update(counts["converted"])
            self.truncated.extend(counts["truncated"])
            self.bad.extend(map(tuple, counts["bad"]))
            self.too_large.extend(map(tuple, counts["too_large"]))
            self.rotated += counts["rotated"]

    def summary(self) -> str | None:
        """One line of everything counted since the last reset, or None if nothing happened."""
        with self._lock:
            parts = []
            if self.bad:  # "first" in name order: threads decode in any order
                what, reason = min(self.bad)
                parts.append(f"{len(self.bad)} unreadable image(s) replaced by a gray placeholder (first: {what}: "
                             f"{reason})")
            if self.too_large:
                what, reason = min(self.too_large)
                parts.append(f"{len(self.too_large)} image(s) too large to decode replaced by a gray placeholder "
                             f"(first: {what}: {reason})")
            if self.truncated:
                parts.append(f"{len(self.truncated)} truncated image(s) decoded partially "
                             f"(first: {min(self.truncated)})")
            if self.converted:
                modes = ", ".join(f"{mode}: {n}" for mode, n in sorted(self.converted.items()))
                parts.append(f"{sum(self.converted.values())} image(s) converted to 8-bit RGB ({modes})")
            if self.rotated:
                parts.append(f"{self.rotated} image(s) turned upright by their EXIF orientation")
            return "; ".join(parts) or None


def describe_record(record) -> str:
    if isinstance(record, (str, os.PathLike)):
        return os.fspath(record)
    if isinstance(record, (bytes, bytearray, memoryview)):
        return f"<{len(record)} encoded bytes>"
    return f"<{type(record).__name__}>"


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
    """8-bit RGB of any PIL mode; 16- and 32-bit integer grayscale is scaled (65535 -> 255), not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L (16-bit PNG) and I (32-bit)
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        image = Image.fromarray(np.clip(np.round(values * (255.0 if values.max(initial=0) <= 1 else 1.0)),
                                        0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


# A file whose data ends early decodes as far as it goes when PIL's module-wide flag is set. Only
# files found truncated (`_looks_truncated`) are decoded under it, one at a time.
_TRUNCATED_LOCK = threading.Lock()


def _looks_truncated(data: bytes) -> bool:
    """True if a JPEG lacks its end-of-image marker or a PNG its IEND chunk."""
    if data[:3] == b"\xff\xd8\xff":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in data[-16:]
    return False


def _has_exif(image: Image.Image) -> bool:
    """Whether the file carries EXIF at all (most training images do not): parsing it costs more."""
    return "exif" in image.info or "Raw profile type exif" in image.info


def _decode(record, report: DecodeReport | None, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple:
    """(image, jpeg): the record as a PIL image (lazy unless it had to be loaded), upright, and its
    bytes when it is a plain JPEG (RGB, complete, upright) that `_pixels` may decode directly, else
    None. BadImage if it is no image, TooLarge if it has more than `max_pixels`."""
    data = None
    if isinstance(record, (str, os.PathLike)):
        with open(record, "rb") as f:
            data = f.read()
    elif isinstance(record, (bytes, bytearray, memoryview)):
        data = bytes(record)
    try:
        image = open_image(data if data is not None else record)
    except UnidentifiedImageError:
        raise BadImage("not an image (no known image format)") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise BadImage(f"not an image ({type(e).__name__}: {str(e)[:120]})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImage(f"claims {width}x{height} pixels; a corrupt header")
    if width * height > max_pixels:
        raise TooLarge(f"{width}x{height} pixels, above dataset.max_image_pixels={max_pixels}; raise it to "
                       f"train on such images")
    truncated = data is not None and _looks_truncated(data)
    if truncated:
        with _TRUNCATED_LOCK:
            previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
            try:
                image.load()
            except (OSError, ValueError, SyntaxError, EOFError) as e:
                raise BadImage(f"truncated and undecodable ({type(e).__name__}: {str(e)[:120]})") from None
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
        if report is not None:
            report.add_truncated(describe_record(record))
    if report is not None and image.mode != "RGB" and data is not None:
        report.add_converted(image.mode)
    rotated = False
    try:
        if data is not None and _has_exif(image) and image.getexif().get(EXIF_ORIENTATION, 1) in range(2, 9):
            image = ImageOps.exif_transpose(image)  # decodes the whole image: no reduced-scale draft for these
            rotated = True
            if report is not None:
                report.add_rotated()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage(f"corrupt image data ({type(e).__name__}: {str(e)[:120]})") from None
    plain_jpeg = data is not None and image.format == "JPEG" and image.mode == "RGB" and not truncated and not rotated
    return image, data if plain_jpeg else None


def _pixels(image: Image.Image, jpeg: bytes | None) -> np.ndarray:
    """The (drafted) image as a uint8 RGB array. A plain JPEG is decoded by libjpeg-turbo straight
    into NumPy (simplejpeg: the same pixels as PIL's decode at the same DCT scale, without PIL's
    copy out, 1.5x faster); anything else, or a JPEG libjpeg only warns about, goes through PIL."""
    if jpeg is not None:
        width, height = image.size  # after `_draft`: the reduced size PIL would decode
        try:
            pixels = simplejpeg.decode_jpeg(jpeg, "RGB", min_height=height, min_width=width)
        except ValueError:  # strict: a recoverable error; PIL decodes what it can, as before
            pixels = None
        if pixels is not None and pixels.shape[:2] == (height, width):
            return pixels
    return np.asarray(to_rgb(image))


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


def imagenet_train(image: Image.Image, size: int, rng: np.random.Generator, flip: bool,
                   jpeg: bytes | None = None) -> np.ndarray:
    """Random resized crop + flip. The crop is resized with OpenCV's bit-exact bilinear (no
    antialiasing, as tf.data's and MindSpore's RandomCropDecodeResize): 2.5x faster than PIL's
    antialiased resize and the same pixels on every CPU."""
    width, height = image.size
    left, top, w, h = random_resized_crop_box(width, height, rng)
    sx, sy = _draft(image, math.ceil(width * size / w), math.ceil(height * size / h))
    x0, y0 = round(left * sx), round(top * sy)  # the window in the (reduced-scale) decoded pixels
    x1, y1 = max(x0 + 1, round((left + w) * sx)), max(y0 + 1, round((top + h) * sy))
    pixels = _pixels(image, jpeg)
    out = cv2.resize(pixels[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR_EXACT)
    if flip and rng.random() < 0.5:  # the same draw as _maybe_flip, mirrored without a strided copy
        out = cv2.flip(out, 1)
    return out


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


# ----------------------------------------------------------------------------- entry points

_AUGMENT_STREAM = 0xA06E  # domain tag: the augmentation streams never meet the order stream (dataset.py)


def seed_words(seed: int) -> list:
    seed = int(seed) % (1 << 64)  # SeedSequence wants non-negative words
    return [seed & 0xFFFFFFFF, seed >> 32]


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of every random choice made for example `index` in `epoch`."""
    return np.random.default_rng([_AUGMENT_STREAM, *seed_words(seed), int(epoch), int(index)])


def placeholder(size: int) -> np.ndarray:
    """What a record that cannot be decoded becomes: the mean color (0 after normalization)."""
    return np.broadcast_to(np.round(NORMALIZE_MEAN).astype(np.uint8), (size, size, 3))


def decode_example(record, index: int, *, size: int, train: bool, small: bool, flip: bool, seed: int, epoch: int,
                   max_pixels: int = MAX_IMAGE_PIXELS, report: DecodeReport) -> np.ndarray:
    """Example `index` of a pass as uint8 (size, size, 3): `preprocess` with its own generator; a record
    that cannot be decoded is counted in `report` and becomes the placeholder."""
    rng = example_rng(seed, epoch, index) if train else None
    try:
        return preprocess(record, size=size, train=train, small=small, flip=flip, rng=rng, report=report,
                          max_pixels=max_pixels)
    except BadImage as e:
        add = report.add_too_large if isinstance(e, TooLarge) else report.add_bad
        add(describe_record(record), str(e))
        return placeholder(size)



def preprocess(record, *, size: int, train: bool, small: bool, flip: bool,
               rng: np.random.Generator | None = None, report: DecodeReport | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one record and apply the policy; returns uint8 (size, size, 3).

    Raises BadImage if the record is not a decodable image; conversions and truncated files are
    counted in `report`."""
    if train and rng is None:
        raise ValueError("training preprocessing needs a per-example random generator")
    image, jpeg = _decode(record, report, max_pixels)
    try:
        if train:
            out = small_train(image, size, rng, flip) if small else imagenet_train(image, size, rng, flip, jpeg)
        else:
            out = small_eval(image, size) if small else imagenet_eval(image, size)
    except (OSError, SyntaxError, EOFError) as e:  # PIL decodes lazily: broken data surfaces here
        raise BadImage(f"corrupt image data ({type(e).__name__}: {str(e)[:120]})") from None
    return np.ascontiguousarray(out)
