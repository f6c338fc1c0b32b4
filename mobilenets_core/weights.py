"""The canonical weight format: the hub every engine and foreign format converts through.

A canonical file is a .safetensors file of float32 NumPy arrays keyed by the names that
`specs.canonical_shapes` derives from the architecture (conv weights OIHW, dense weights
(out, in), BatchNorm as `scale`, `bias`, `mean`, `var`). Its metadata records the model
(name, width, groups, num_classes) and the BatchNorm epsilon the weights were trained with,
so a reader can rebuild the exact network and evaluate it with its source's epsilon.

Spokes: `mobilenets_jax.weights` and `mobilenets_ms.weights` (engine <-> canonical),
`mobilenets_core.timm_format` (timm state dict <-> canonical).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from mobilenets_core import atomic_files, specs

FORMAT_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a weight file says about the network it belongs to."""

    name: str
    width: float
    groups: int | None
    num_classes: int
    bn_eps: float

    def architecture(self) -> specs.Architecture:
        return specs.build_architecture(self.name, self.width, self.groups, self.num_classes)

    def to_metadata(self) -> dict:
        return {"format": "mobilenets-canonical", "version": FORMAT_VERSION,
                "model": json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_metadata(cls, metadata: dict | None, path: str) -> ModelInfo:
        if not metadata or metadata.get("format") != "mobilenets-canonical":
            raise ValueError(f"{path} is not a mobilenets canonical weight file (no 'mobilenets-canonical' metadata)")
        return cls(**json.loads(metadata["model"]))

    @classmethod
    def from_config(cls, model_cfg) -> ModelInfo:
        return cls(model_cfg.name, float(model_cfg.width), model_cfg.get("groups"), int(model_cfg.num_classes),
                   float(model_cfg.bn_eps))


def check_state(state: dict, arch: specs.Architecture, source: str = "weights") -> None:
    """Raise ValueError listing every missing, unexpected or wrongly shaped tensor."""
    expected = {name: shape for name, (shape, _) in specs.canonical_shapes(arch).items()}
    check_shapes(state, expected, f"{source} do not fit {arch.name} width={arch.width} groups={arch.groups} "
                                  f"num_classes={arch.head.num_classes}:")


def check_shapes(state: dict, expected: dict, title: str) -> None:
    """Raise ValueError titled `title` listing tensors missing from, extra in, or misshapen in `state`."""
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    wrong = [f"{n}: {tuple(np.shape(state[n]))} != expected {expected[n]}"
             for n in expected if n in state and tuple(np.shape(state[n])) != tuple(expected[n])]
    if missing or unexpected or wrong:
        lines = [title]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise ValueError("\n".join(lines))


def save(path: str, state: dict, info: ModelInfo) -> None:
    """Write a canonical file atomically (a crash never leaves a half-written file at `path`)."""
    from safetensors.numpy import save_file

    check_state(state, info.architecture())
    arrays = {name: np.ascontiguousarray(np.asarray(value, dtype=np.float32)) for name, value in state.items()}
    with atomic_files.staged(path) as tmp:
        save_file(arrays, tmp, metadata=info.to_metadata())


def load(path: str) -> tuple[dict, ModelInfo]:
    """Read a canonical file: (name -> float32 ndarray, ModelInfo), validated against its architecture."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path} does not exist")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata()
            state = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise ValueError(f"{path} could not be read as a .safetensors file: {e}") from e
    info = ModelInfo.from_metadata(metadata, path)
    check_state(state, info.architecture(), source=path)
    return state, info
