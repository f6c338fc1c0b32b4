"""The MindSpore engine: models and weight conversion here; training (`train`), export and bench in their modules.

Importing this package imports MindSpore and the framework-free core only, never JAX or TensorFlow.
"""
from __future__ import annotations

import os

# MindSpore logs WARNINGs from C++ (e.g. its NumPy-2 bridge notice, see models.prime_numpy_bridge);
# keep errors only unless the user asked for more (GLOG_v=1 or 2).
os.environ.setdefault("GLOG_v", "3")

from mobilenets_core import weights as canonical  # noqa: E402
from mobilenets_ms import models  # noqa: E402
from mobilenets_ms.weights import load_canonical, to_canonical  # noqa: E402

models.prime_numpy_bridge()  # once per process, before any MindSpore op runs

_IDENTITY_FIELDS = ("name", "width", "groups", "num_classes")


def load_model(config, weights: str | None = None):
    """The network for `config.model`, in eval mode (`set_train(False)`).

    Without weights the parameters are freshly initialised from `config.train.seed`. With weights
    (a canonical .safetensors file) the file must describe the same model as the config, and the
    network uses the file's BatchNorm epsilon (weights are evaluated the way they were trained)."""
    seed = int(config.train.seed)
    if weights is None:
        net = models.build_network(config.model, seed=seed)
    else:
        state, info = canonical.load(weights)
        expected = canonical.ModelInfo.from_config(config.model)
        differing = [f"{field}: file has {getattr(info, field)!r}, config has {getattr(expected, field)!r}"
                     for field in _IDENTITY_FIELDS if getattr(info, field) != getattr(expected, field)]
        if differing:
            raise ValueError(f"{weights} holds a different model than the config ({'; '.join(differing)}); "
                             f"set --config.model.* to match the file")
        net = models.build_network(config.model, bn_eps=info.bn_eps, seed=seed)
        load_canonical(net, state)
    net.set_train(False)
    return net


def count_parameters(config) -> int:
    """Trainable parameters of the built Cell (BatchNorm running statistics excluded)."""
    net = models.build_network(config.model, seed=int(config.train.seed))
    return int(sum(p.size for p in net.trainable_params()))


def save_canonical(net, info: canonical.ModelInfo, path: str) -> None:
    """Write `net` as a canonical .safetensors file described by `info` (a ModelInfo)."""
    arch = net.arch
    differing = [field for field, value in (("name", arch.name), ("width", arch.width), ("groups", arch.groups),
                                            ("num_classes", arch.head.num_classes))
                 if getattr(info, field) != value]
    if differing:
        raise ValueError("ModelInfo does not describe this network: "
                         + "; ".join(f"{f}: info has {getattr(info, f)!r}" for f in differing))
    canonical.save(path, to_canonical(net), info)


__all__ = ["load_model", "count_parameters", "save_canonical", "to_canonical", "load_canonical", "models"]
