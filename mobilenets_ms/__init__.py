"""The MindSpore engine: models and weight binding here; training (`train`), export and bench in their modules.

Importing this package imports MindSpore and the framework-free core only, never JAX or TensorFlow.
"""
from __future__ import annotations

import os

# MindSpore logs WARNINGs from C++ (e.g. its NumPy-2 bridge notice, see models.prime_numpy_bridge);
# keep errors only unless the user asked for more (GLOG_v=1 or 2).
os.environ.setdefault("GLOG_v", "3")

from mobilenets_ms import onednn_isa  # noqa: E402  imports nothing of MindSpore

onednn_isa.apply()  # before MindSpore loads oneDNN: AVX2 kernels where the CPU has AVX-512

from mobilenets_core.weights import ModelInfo, canonical, identity, reader  # noqa: E402
from mobilenets_ms import models  # noqa: E402
from mobilenets_ms.weights import load_canonical, to_canonical  # noqa: E402

models.prime_numpy_bridge()  # once per process, before any MindSpore op runs


def load_model(config, weights: str | None = None):
    """The network for `config.model`, in eval mode (`set_train(False)`), with weights from any file
    `init.weights` takes (canonical or timm .safetensors, timm .pth, MindSpore .ckpt, a JAX or
    MindSpore workdir).

    Without weights the parameters are freshly initialised from `config.train.seed`. With weights
    the file must hold the config's network (class count included), and the network uses the
    file's BatchNorm epsilon and architecture convention (weights are evaluated the way they were trained)."""
    seed = int(config.train.seed)
    if weights is None:
        net = models.build_network(config.model, seed=seed)
    else:
        file = reader.model_weights(weights, ModelInfo.from_config(config.model))
        net = models.build_network(config.model, bn_eps=file.info.bn_eps, seed=seed, convention=file.info.convention)
        load_canonical(net, file.state)
    net.set_train(False)
    return net


def count_parameters(config) -> int:
    """Trainable parameters of the built Cell (BatchNorm running statistics excluded)."""
    net = models.build_network(config.model, seed=int(config.train.seed))
    return int(sum(p.size for p in net.trainable_params()))


def save_canonical(net, info: ModelInfo, path: str) -> None:
    """Write `net` as a canonical .safetensors file described by `info`, which must name its network."""
    differ = identity.differing(info, ModelInfo.of_architecture(net.arch, info.bn_eps),
                                identity.SHAPE_FIELDS + ("convention",))
    if differ:
        raise ValueError(f"ModelInfo does not describe this network: it has {identity.settings(info, differ)}, "
                         f"the network {identity.settings(ModelInfo.of_architecture(net.arch, 0.0), differ)}")
    canonical.save(path, to_canonical(net), info)


__all__ = ["load_model", "count_parameters", "save_canonical", "to_canonical", "load_canonical", "models"]
