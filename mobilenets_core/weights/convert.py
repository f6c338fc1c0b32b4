"""--mode=convert: any supported weight file into any other, through the canonical format.

    python main.py --config=configs/mnv3_large.py --mode=convert \\
        --config.init.weights=IN --config.convert.output=OUT [--config.convert.format=...]

IN: anything `reader.read` takes (canonical or timm .safetensors, timm .pth, MindSpore .ckpt, a
JAX or MindSpore workdir). OUT's format follows convert.format, or its name: *.safetensors ->
canonical ("timm" for a timm state dict), *.ckpt -> MindSpore, a directory -> a training workdir
of the --backend engine whose step-0 checkpoint holds the weights (evaluate it, or train on from
it). Only that last one needs an engine: it hands its writer in as `write_workdir`. The model is
the config's; the class count and epsilon are the file's. Nothing is written unless the whole
file fits the model.
"""
from __future__ import annotations

import os

from mobilenets_core import atomic_files
from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights import canonical, mindspore_ckpt, reader, timm
from mobilenets_core.weights.identity import ModelInfo

FORMATS = ("canonical", "timm", "mindspore", "workdir")


def output_format(config) -> str:
    fmt = config.convert.format or ""
    out = config.convert.output
    if not out:
        raise ConfigError("--mode=convert needs --config.convert.output=PATH (.safetensors, .ckpt or a directory)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ConfigError(f"convert.output={out!r}: the directory {parent} does not exist; create it first")
    if not fmt:
        extension = os.path.splitext(out)[1] if not os.path.isdir(out) else ""
        if extension not in ("", ".safetensors", ".ckpt"):
            raise ConfigError(f"convert.output={out!r}: {extension} is not a format written here; name a "
                              f".safetensors file (canonical; convert.format=timm for timm's names), a .ckpt "
                              f"(MindSpore) or a directory (a training workdir)")
        fmt = "canonical" if out.endswith(".safetensors") else "mindspore" if out.endswith(".ckpt") else "workdir"
    if fmt not in FORMATS:
        raise ConfigError(f"convert.format={fmt!r} is not one of: {', '.join(FORMATS)}")
    return fmt


def convert(config, write_workdir=None) -> str:
    """Write config.init.weights as config.convert.output; `write_workdir(config, out, state, meta)`
    is the engine's writer of a training workdir whose step-0 checkpoint holds `state`. Returns the output path."""
    fmt = output_format(config)
    if not config.init.weights:
        raise ConfigError("--mode=convert needs --config.init.weights=INPUT (the file or workdir to convert)")
    weights = reader.read(config.init.weights, ModelInfo.from_config(config.model))
    state, info, out = weights.state, weights.info, config.convert.output
    if fmt == "canonical":
        canonical.save(out, state, info)
    elif fmt == "timm":
        from safetensors.numpy import save_file

        with atomic_files.staged(out) as tmp:
            save_file(timm.to_timm(state, info.architecture()), tmp)
    elif fmt == "mindspore":
        mindspore_ckpt.write(out, mindspore_ckpt.from_canonical(state, bn_eps=info.bn_eps))
    else:
        if os.path.isdir(out) and os.listdir(out):
            raise ConfigError(f"convert.output={out!r} is a directory that is not empty; name a new or empty one")
        for field, value in info.as_dict().items():  # the engine builds the file's network
            config.model[field] = value
        write_workdir(config, out, state, {"model": info.as_dict(), "dataset": None, "class_names": None, "epoch": 0,
                                           "image_size": int(config.dataset.image_size)})
    print(f"converted {weights.kind} {weights.path} -> {fmt} {out} ({info.name} width {info.width}"
          f"{f' groups {info.groups}' if info.groups else ''}, {info.num_classes} classes, bn_eps {info.bn_eps})")
    return out
