"""export.json: the one description of a deployment export, whichever engine wrote the files.

It tells an app everything it needs besides the files themselves: input shape, dtype and the
normalization `mobilenets_core.data` applies, output, class names, and per artefact its format,
batch and how to load it. Each engine's export.py writes its artefacts and hands their entries here.
"""
from __future__ import annotations

import json
import os

from mobilenets_core import atomic_files
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import NORMALIZE_MEAN, NORMALIZE_STD
from mobilenets_core.weights import ModelInfo, hub

FILE_NAME = "export.json"


def class_names(workdir: str, meta: dict) -> list | None:
    """The checkpoint's own class names; workdir/dataset.json (the latest run's) only for older checkpoints."""
    if meta.get("class_names"):
        return list(meta["class_names"])
    path = os.path.join(workdir, "dataset.json")
    if os.path.exists(path):
        with open(path) as f:
            return list(json.load(f).get("class_names") or []) or None
    return None


def output_dir(workdir: str) -> str:
    """WORKDIR/export, made if need be; ConfigError when something that is no directory is in the way."""
    out_dir = os.path.join(workdir, "export")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"{out_dir} is a file; move it away so that --mode=export can write its directory there")
    os.makedirs(out_dir, exist_ok=True)
    return out_dir


def weights_source(config, step: int | None, checkpoint_path: str) -> dict:
    """export.json's "checkpoint": the checkpoint exported, or config.init.weights where the workdir had none."""
    if step is None:
        source = config.init.weights
        return {"path": source if hub.is_hub_name(source) else os.path.abspath(source), "step": None,
                "weights": "init.weights"}
    return {"path": checkpoint_path, "step": step, "weights": "ema" if config.ema.decay > 0 else "params"}


def artefact(fmt: str, file_name: str, batch: int | None, image_size: int, num_classes: int, **extra) -> dict:
    """One entry of "artefacts": float32 NHWC images in, float32 logits out; `batch=None` is any batch."""
    return {"format": fmt, "path": file_name, "input_shape": [batch, image_size, image_size, 3],
            "input_dtype": "float32", "output_shape": [batch, num_classes], "output_dtype": "float32", **extra}


def describe(engine: str, workdir: str, meta: dict, model_config, checkpoint: dict, image_size: int,
             num_classes: int, artefacts: list) -> dict:
    """The export.json content. Model fields come from the checkpoint's meta, `model_config` fills the gaps."""
    return {
        "engine": engine,
        "model": ModelInfo.of_checkpoint(meta, model_config).as_dict(),
        "checkpoint": checkpoint,
        "input": {"shape": [None, image_size, image_size, 3], "dtype": "float32", "layout": "NHWC", "color": "RGB",
                  "normalization": {"mean": NORMALIZE_MEAN.tolist(), "std": NORMALIZE_STD.tolist(),
                                    "formula": "(pixel_0_255 - mean) / std"}},
        "output": {"shape": [None, num_classes], "dtype": "float32", "kind": "logits"},
        "class_names": class_names(workdir, meta),
        "artefacts": artefacts,
    }


def write(out_dir: str, paths: dict, description: dict) -> dict:
    """Write out_dir/export.json (atomically), print every exported path; returns `paths` with "metadata" added."""
    paths = {**paths, "metadata": os.path.join(out_dir, FILE_NAME)}
    atomic_files.write_json(paths["metadata"], description, indent=2)
    for key, path in paths.items():
        print(f"exported {key}: {path}")
    return paths
