"""--mode=predict, the engine-independent part: which images, how they are prepared, what is printed.

Images get the evaluation preprocessing of the training data (small images resized, others
resized to size / 0.875 and center-cropped), so a prediction sees what validation saw. Class
names come from workdir/dataset.json, written when the run trained. Each engine supplies only
`logits_fn(float32 NHWC batch) -> logits`.
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from mobilenets_core import atomic_files
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import preprocess
from mobilenets_core.data.sources import IMAGE_EXTENSIONS

BATCH = 32


def check_output(path: str | None) -> None:
    """predict.output's directory must exist: found out before the work, not after it."""
    parent = os.path.dirname(os.path.abspath(path)) if path else None
    if parent and not os.path.isdir(parent):
        raise ConfigError(f"predict.output={path!r}: the directory {parent} does not exist; create it first")


def collect_inputs(spec: str | None) -> list:
    """Image files named by a file, a directory (searched recursively) or a glob pattern, sorted."""
    if not spec:
        raise ConfigError("--mode=predict needs --config.predict.inputs=FILE_OR_DIR_OR_GLOB")
    if os.path.isdir(spec):
        found = [os.path.join(root, f) for root, _, files in os.walk(spec) for f in files]
    elif os.path.isfile(spec):
        return [spec]
    else:
        found = glob.glob(spec, recursive=True)
    images = sorted(f for f in found if f.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise ConfigError(f"predict.inputs={spec!r} names no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def class_names(workdir: str, num_classes: int) -> list:
    path = os.path.join(workdir, "dataset.json")
    if os.path.exists(path):
        with open(path) as f:
            names = json.load(f)["class_names"]
        if len(names) == num_classes:
            return names
    return [str(i) for i in range(num_classes)]


def prepare(path: str, image_size: int, max_pixels: int = preprocess.MAX_IMAGE_PIXELS) -> np.ndarray:
    try:
        image = preprocess.open_image(path)
        small = preprocess.is_small_image(image.height, image.width)
        return preprocess.normalize(preprocess.preprocess(path, size=image_size, train=False, small=small, flip=False,
                                                          max_pixels=max_pixels))
    except preprocess.BadImage as e:
        reason = str(e)
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        reason = f"not an image ({type(e).__name__})"
    raise ConfigError(f"predict.inputs: {path} is not a readable image ({reason}); remove it or point "
                      f"predict.inputs at image files")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def run(config, workdir: str, logits_fn) -> list:
    """Predict every input; print one line per image and write predict.output (.jsonl) if set."""
    files = collect_inputs(config.predict.inputs)
    names = class_names(workdir, int(config.model.num_classes))
    k = min(int(config.predict.top_k), len(names))
    results = []
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        batch = np.stack([prepare(f, int(config.dataset.image_size),
                                  config.dataset.get("max_image_pixels") or preprocess.MAX_IMAGE_PIXELS)
                          for f in chunk])
        probs = softmax(np.asarray(logits_fn(batch), dtype=np.float64))
        for path, p in zip(chunk, probs):
            top = np.argsort(-p)[:k]
            results.append({"image": path, "top": [{"class": names[i], "index": int(i), "probability": float(p[i])}
                                                   for i in top]})
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    if config.predict.output:
        atomic_files.write_text(config.predict.output, "".join(json.dumps(r) + "\n" for r in results))
    return results
