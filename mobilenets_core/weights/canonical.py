"""The canonical weight file: the hub every engine and foreign format converts through.

A canonical file is a .safetensors file of float32 NumPy arrays keyed by the names that
`specs.canonical_shapes` derives from the architecture (conv weights OIHW, dense weights
(out, in), BatchNorm as `scale`, `bias`, `mean`, `var`). Its metadata holds the `ModelInfo`
(name, width, groups, num_classes, and the BatchNorm epsilon the weights were trained with),
so a reader can rebuild the exact network and evaluate it with its source's epsilon.
"""
from __future__ import annotations

import json
import os

import numpy as np

from mobilenets_core import atomic_files
from mobilenets_core.weights.identity import ModelInfo
from mobilenets_core.weights.tensors import check_state

FORMAT = "mobilenets-canonical"
FORMAT_VERSION = "1"


def metadata(info: ModelInfo) -> dict:
    return {"format": FORMAT, "version": FORMAT_VERSION, "model": json.dumps(info.as_dict())}


def info_from_metadata(meta: dict | None) -> ModelInfo | None:
    """The ModelInfo of a canonical file's metadata; None for any other .safetensors file."""
    if not meta or meta.get("format") != FORMAT:
        return None
    return ModelInfo.from_dict(json.loads(meta["model"]))


def save(path: str, state: dict, info: ModelInfo) -> None:
    """Write a canonical file atomically (a crash never leaves a half-written file at `path`)."""
    from safetensors.numpy import save_file

    check_state(state, info.architecture())
    arrays = {name: np.ascontiguousarray(np.asarray(value, dtype=np.float32)) for name, value in state.items()}
    with atomic_files.staged(path) as tmp:
        save_file(arrays, tmp, metadata=metadata(info))


def read_safetensors(path: str) -> tuple[dict, dict]:
    """(name -> ndarray, metadata) of any .safetensors file; ValueError if it cannot be read as one."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path} does not exist")
    try:
        with safe_open(path, framework="numpy") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise ValueError(f"{path} could not be read as a .safetensors file: {' '.join(str(e).split())[:300]}") from e


def load(path: str) -> tuple[dict, ModelInfo]:
    """Read a canonical file: (name -> float32 ndarray, ModelInfo), validated against its architecture."""
    state, meta = read_safetensors(path)
    info = info_from_metadata(meta)
    if info is None:
        raise ValueError(f"{path} is not a mobilenets canonical weight file (no '{FORMAT}' metadata)")
    check_state(state, info.architecture(), source=path)
    return state, info
