"""The JAX/Flax engine: models, training (`train`), export and bench on any JAX backend."""
from __future__ import annotations

import jax
import numpy as np

from mobilenets_core.weights import ModelInfo, canonical, reader
from mobilenets_core.weights.flax_tree import from_canonical, to_canonical
from mobilenets_jax import models


def load_model(config, weights: str | None = None):
    """(module, variables) for `config.model`, with weights from any file `init.weights` takes
    (canonical or timm .safetensors, timm .pth, MindSpore .ckpt, a JAX or MindSpore workdir).

    Without weights the variables are freshly initialised from `config.train.seed`. With weights,
    the file must hold the config's network (class count included), and the network uses the
    file's BatchNorm epsilon and architecture convention (weights are evaluated the way they were trained)."""
    if weights is None:
        module = models.build_network(config.model)
        return module, models.init_variables(module, config.train.seed)
    file = reader.model_weights(weights, ModelInfo.from_config(config.model))
    module = models.build_network(config.model, bn_eps=file.info.bn_eps, convention=file.info.convention)
    return module, from_canonical(file.state, module.arch)


def count_parameters(config) -> int:
    """Trainable parameters of the Flax model (counted from its variables, not from the specs)."""
    module = models.build_network(config.model)
    shapes = jax.eval_shape(lambda: models.init_variables(module, config.train.seed, image_size=32))
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes["params"])))


def save_canonical(variables, config, path: str, bn_eps: float | None = None, convention: str | None = None) -> None:
    """Write `variables` of `config.model` (of the `convention` they were loaded as, when given) as a
    canonical .safetensors file."""
    info = ModelInfo.from_config(config.model)
    if bn_eps is not None:
        info = info.replace(bn_eps=float(bn_eps))
    if convention is not None:
        info = info.replace(convention=convention)
    canonical.save(path, to_canonical(variables, info.architecture()), info)


__all__ = ["load_model", "count_parameters", "save_canonical", "to_canonical", "from_canonical", "models"]
