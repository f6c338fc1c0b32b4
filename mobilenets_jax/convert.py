"""--mode=convert: any supported weight file into any other, through the canonical format.

    python main.py --config=configs/mnv3_large.py --mode=convert \\
        --config.init.weights=IN --config.convert.output=OUT [--config.convert.format=...]

IN: canonical or timm .safetensors, timm .pth, MindSpore .ckpt, or a JAX workdir.
OUT's format follows convert.format, or its name: *.safetensors -> canonical ("timm" for a
timm state dict), *.ckpt -> MindSpore, a directory -> a JAX workdir whose step-0 checkpoint holds
the weights (evaluate it, or train on from it). The model is the config's; the class count is
the file's. Nothing is written unless the whole file fits the model.
"""
from __future__ import annotations

import os

import numpy as np

from mobilenets_core import atomic_files, mindspore_ckpt, specs, timm_format, weight_files, weights
from mobilenets_core.config_check import ConfigError

FORMATS = ("canonical", "timm", "mindspore", "jax")


def output_format(config) -> str:
    fmt = config.convert.format or ""
    out = config.convert.output
    if not out:
        raise ConfigError("--mode=convert needs --config.convert.output=PATH (.safetensors, .ckpt or a directory)")
    if not fmt:
        fmt = "canonical" if out.endswith(".safetensors") else "mindspore" if out.endswith(".ckpt") else "jax"
    if fmt not in FORMATS:
        raise ConfigError(f"convert.format={fmt!r} is not one of: {', '.join(FORMATS)}")
    return fmt


def read(config) -> tuple[dict, weights.ModelInfo, str]:
    """The input file as (canonical state, ModelInfo with the file's class count and eps, kind)."""
    from mobilenets_jax.weights import read_workdir

    path = config.init.weights
    if not path:
        raise ConfigError("--mode=convert needs --config.init.weights=INPUT (the file or JAX workdir to convert)")
    if os.path.isdir(path):
        state, model = read_workdir(path)
        info = weights.ModelInfo(model["name"], float(model["width"]), model["groups"], int(model["num_classes"]),
                                 float(model["bn_eps"]))
        return state, info, "JAX workdir"
    arch = specs.architecture_from_config(config.model)
    state, bn_eps, kind = weight_files.read(path, arch)
    if "classifier.weight" not in state:
        raise ConfigError(f"init.weights={path!r} has no classifier.weight; is it a {arch.name} file?")
    classes = int(state["classifier.weight"].shape[0])
    info = weights.ModelInfo(arch.name, arch.width, arch.groups, classes, bn_eps)
    weights.check_state(state, info.architecture(), source=f"init.weights={path}")
    return state, info, kind


def convert(config, workdir: str | None = None) -> str:
    del workdir  # the output path is convert.output
    fmt = output_format(config)
    state, info, kind = read(config)
    out = config.convert.output
    if fmt == "canonical":
        weights.save(out, state, info)
    elif fmt == "timm":
        from safetensors.numpy import save_file

        with atomic_files.staged(out) as tmp:
            save_file(timm_format.to_timm(state, info.architecture()), tmp)
    elif fmt == "mindspore":
        tensors = mindspore_ckpt.from_canonical(state)
        tensors["mobilenets.bn_eps"] = np.array([info.bn_eps], np.float32)
        mindspore_ckpt.write(out, tensors)
    else:
        _write_workdir(config, out, state, info)
    print(f"converted {kind} {config.init.weights} -> {fmt} {out} ({info.name} width {info.width}"
          f"{f' groups {info.groups}' if info.groups else ''}, {info.num_classes} classes, bn_eps {info.bn_eps})")
    return out


def _write_workdir(config, out: str, state: dict, info: weights.ModelInfo) -> None:
    from mobilenets_jax.checkpoints import Checkpoints
    from mobilenets_jax.train import Trainer
    from mobilenets_jax.weights import from_canonical

    checkpoints = Checkpoints(out, keep=int(config.checkpoint.keep))
    if checkpoints.latest_step() is not None:
        raise ConfigError(f"convert.output={out!r} already holds checkpoints; choose an empty directory")
    for field in ("name", "width", "groups", "num_classes", "bn_eps"):
        config.model[field] = getattr(info, field)
    trainer = Trainer(config, 1)
    state0 = trainer.init_state(int(config.train.seed), from_canonical(state, info.architecture()))
    meta = {"model": {k: config.model[k] for k in ("name", "width", "groups", "num_classes", "bn_eps")},
            "dataset": None, "class_names": None, "epoch": 0, "image_size": int(config.dataset.image_size)}
    checkpoints.save(0, state0, meta)
    checkpoints.close()
