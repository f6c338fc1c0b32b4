"""The JAX/Flax engine: models, weight conversion, training (`train`), export and bench on any JAX backend."""
from __future__ import annotations

import jax
import numpy as np

from mobilenets_core import weights as canonical
from mobilenets_jax import models
from mobilenets_jax.weights import from_canonical, to_canonical


def load_model(config, weights: str | None = None):
    """(module, variables) for `config.model`; `weights` is a canonical .safetensors file.

    Without weights the variables are freshly initialised from `config.train.seed`. With weights,
    the file must describe the same model as the config, and the network uses the file's
    BatchNorm epsilon (weights are evaluated the way they were trained)."""
    if weights is None:
        module = models.build_network(config.model)
        return module, models.init_variables(module, config.train.seed)
    state, info = canonical.load(weights)
    expected = canonical.ModelInfo.from_config(config.model)
    differing = [f"{field}: file has {getattr(info, field)!r}, config has {getattr(expected, field)!r}"
                 for field in ("name", "width", "groups", "num_classes")
                 if getattr(info, field) != getattr(expected, field)]
    if differing:
        raise ValueError(f"{weights} holds a different model than the config ({'; '.join(differing)}); "
                         f"set --config.model.* to match the file")
    module = models.build_network(config.model, bn_eps=info.bn_eps)
    return module, from_canonical(state, module.arch)


def count_parameters(config) -> int:
    """Trainable parameters of the Flax model (counted from its variables, not from the specs)."""
    module = models.build_network(config.model)
    shapes = jax.eval_shape(lambda: models.init_variables(module, config.train.seed, image_size=32))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"])))


def save_canonical(variables, config, path: str, bn_eps: float | None = None) -> None:
    """Write `variables` of `config.model` as a canonical .safetensors file."""
    info = canonical.ModelInfo.from_config(config.model)
    if bn_eps is not None:
        info = canonical.ModelInfo(info.name, info.width, info.groups, info.num_classes, float(bn_eps))
    canonical.save(path, to_canonical(variables, info.architecture()), info)


__all__ = ["load_model", "count_parameters", "save_canonical", "to_canonical", "from_canonical", "models"]
