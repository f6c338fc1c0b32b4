"""--mode=convert: any supported weight file into any other, through the canonical format.

    python main.py --config=configs/mnv3_large.py --mode=convert \\
        --config.init.weights=IN --config.convert.output=OUT [--config.convert.format=...]

IN: anything `reader.read` takes (canonical or timm .safetensors, timm .pth, MindSpore .ckpt, a
JAX or MindSpore workdir). OUT's format follows convert.format, or its name: *.safetensors ->
canonical ("timm" for a timm state dict), *.ckpt -> MindSpore ("mindcv" for mindcv's names: a
file `mindcv.create_model(name, checkpoint_path=...)` loads), a directory -> a training workdir
of the --backend engine whose step-0 checkpoint holds the weights (evaluate it, or train on from
it). Only that last one needs an engine: it hands its writer in as `write_workdir`. The model is
the config's; the class count, epsilon and architecture convention are the file's. timm's and
mindcv's formats hold their own network only: weights of the other convention are refused unless
both networks compute the same function (ShuffleNetV1). Nothing is written unless the whole file
fits the model.
"""
from __future__ import annotations

import os

import numpy as np

from mobilenets_core import atomic_files, specs
from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights import canonical, mindcv, mindspore_ckpt, reader, timm
from mobilenets_core.weights.identity import ModelInfo

FORMATS = ("canonical", "timm", "mindspore", "mindcv", "workdir")
_NETWORKS = {"timm": "timm's network (symmetric padding, ReLU6 MobileNetV1)",
             "mindcv": "mindcv's network (\"same\"-padded MobileNetV3 depthwise convs and its own widths and head, "
                       "ReLU MobileNetV1)"}


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
                              f"(MindSpore; convert.format=mindcv for mindcv's names) or a directory (a training "
                              f"workdir)")
        fmt = "canonical" if out.endswith(".safetensors") else "mindspore" if out.endswith(".ckpt") else "workdir"
    if fmt not in FORMATS:
        raise ConfigError(f"convert.format={fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "mindcv" and not out.endswith(".ckpt"):
        raise ConfigError(f"convert.output={out!r}: convert.format=mindcv writes a MindSpore checkpoint; name a "
                          f".ckpt file")
    return fmt


def check_foreign_network(fmt: str, info: ModelInfo, path: str) -> None:
    """timm's and mindcv's files hold their own network: ConfigError (one line) for weights of the
    other convention, unless both networks compute the same function of them."""
    if info.convention == fmt:
        return
    theirs = info.replace(convention=fmt)
    try:
        same = specs.same_function(info.architecture(), theirs.architecture())
    except ValueError as e:  # a width or groups the format's library does not have
        raise ConfigError(f"convert.format={fmt}: {path} holds {info.name} width={info.width}"
                          f"{f' groups={info.groups}' if info.groups else ''}, which {fmt} does not have "
                          f"({str(e).split('; ', 1)[-1]})") from None
    if not same:
        raise ConfigError(f"convert.format={fmt}: {path} holds {info.name} width={info.width} trained as "
                          f"{_NETWORKS[info.convention]} (model.convention={info.convention}); {fmt} would "
                          f"run it as {_NETWORKS[fmt]}, and its logits would differ: write canonical, "
                          f"mindspore or a workdir, which keep the convention")


def convert(config, write_workdir=None) -> str:
    """Write config.init.weights as config.convert.output; `write_workdir(config, out, state, meta)`
    is the engine's writer of a training workdir whose step-0 checkpoint holds `state`. Returns the output path."""
    fmt = output_format(config)
    if not config.init.weights:
        raise ConfigError("--mode=convert needs --config.init.weights=INPUT (the file or workdir to convert)")
    weights = reader.read(config.init.weights, ModelInfo.from_config(config.model))
    state, info, out = weights.state, weights.info, config.convert.output
    if fmt in ("timm", "mindcv"):
        check_foreign_network(fmt, info, weights.path)
    if fmt == "mindcv" and np.float32(info.bn_eps) != np.float32(mindcv.MINDCV_BN_EPS):  # a .ckpt keeps float32
        raise ConfigError(f"convert.format=mindcv: {weights.path} was trained with BatchNorm eps {info.bn_eps}; "
                          f"mindcv builds every BatchNorm with eps {mindcv.MINDCV_BN_EPS}, so its logits would "
                          f"differ: write canonical or mindspore, which keep the epsilon")
    if fmt == "canonical":
        canonical.save(out, state, info)
    elif fmt == "timm":
        from safetensors.numpy import save_file

        with atomic_files.staged(out) as tmp:
            save_file(timm.to_timm(state, info.architecture()), tmp)
    elif fmt == "mindspore":
        mindspore_ckpt.write(out, mindspore_ckpt.from_canonical(state, bn_eps=info.bn_eps, convention=info.convention))
    elif fmt == "mindcv":
        info = info.replace(convention=mindcv.CONVENTION)  # the same function (checked above), mindcv's names
        mindspore_ckpt.write(out, mindcv.to_mindcv(state, info.architecture()))
    else:
        if os.path.isdir(out) and os.listdir(out):
            raise ConfigError(f"convert.output={out!r} is a directory that is not empty; name a new or empty one")
        for field, value in info.as_dict().items():  # the engine builds the file's network
            config.model[field] = value
        write_workdir(config, out, state, {"model": info.as_dict(), "dataset": None, "class_names": None, "epoch": 0,
                                           "image_size": int(config.dataset.image_size)})
    print(f"converted {weights.kind} {weights.path} -> {fmt} {out} ({info.name} width {info.width}"
          f"{f' groups {info.groups}' if info.groups else ''}, {info.num_classes} classes, bn_eps {info.bn_eps}"
          f"{f', convention {info.convention}' if info.convention != 'timm' else ''})"
          + (f"; load it with mindcv.create_model({mindcv.model_name(info.name, info.width, info.groups)!r}, "
             f"num_classes={info.num_classes}, checkpoint_path={out!r})" if fmt == "mindcv" else ""))
    return out
