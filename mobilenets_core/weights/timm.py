"""timm state dicts <-> canonical weights (a spoke of the canonical hub).

Covers timm's `mobilenetv1_*`, `mobilenetv2_*`, `mobilenetv3_{small,large}_*` and `mobilenetv4_*`
(EfficientNet-builder models, symmetric padding, BatchNorm eps 1e-5). timm groups blocks into stages,
`blocks.<stage>.<i>`; the stage of each block is recorded in the architecture. The `tf_*` variants use TF "SAME"
padding and eps 1e-3 and are not the same network; they are not supported.
"""
from __future__ import annotations

import os

import numpy as np

from mobilenets_core import specs
from mobilenets_core.weights.tensors import TIMM_BATCHNORM, check, expected_shapes

TIMM_BN_EPS = 1e-5
# Part of a block -> (timm conv name, timm BatchNorm name).
_DS_PARTS = {"dw": ("conv_dw", "bn1"), "pw": ("conv_pw", "bn2")}
_IR_PARTS = {"expand": ("conv_pw", "bn1"), "dw": ("conv_dw", "bn2"), "project": ("conv_pwl", "bn3")}
_ER_PARTS = {"expand": ("conv_exp", "bn1"), "project": ("conv_pwl", "bn2")}
_UIR_PARTS = {part: (f"{timm}.conv", f"{timm}.bn") for part, timm in
              {"dw_start": "dw_start", "expand": "pw_exp", "dw": "dw_mid", "project": "pw_proj", "dw_end": "dw_end"}.items()}
# MobileAttention: canonical layer -> timm module (ConvBN parts: (conv, bn); Conv / Norm: one module)
_ATTENTION_PARTS = {"key_down": ("attn.key.down_conv", "attn.key.norm"),
                    "value_down": ("attn.value.down_conv", "attn.value.norm")}
_ATTENTION_MODULES = {"norm": "norm", "query": "attn.query.proj", "key": "attn.key.proj", "value": "attn.value.proj",
                      "output": "attn.output.proj", "layer_scale": "layer_scale"}
_STAGED = (specs.DepthwiseSeparable, specs.InvertedResidual, specs.EdgeResidual, specs.UniversalInvertedResidual,
           specs.MobileAttention)


def name_map(arch: specs.Architecture) -> dict:
    """canonical name -> timm state-dict key, for every canonical tensor of `arch`."""
    if arch.name == "shufflenet_v1":
        raise ValueError("timm has no ShuffleNetV1; its weights come from the canonical format or MindSpore")
    prefixes = {"stem": ("conv_stem", "bn1")}  # canonical layer prefix -> (timm conv, timm bn)
    se_prefixes = {}
    modules = {}  # canonical layer prefix -> timm module, for the tensors outside a conv + BN pair
    index_in_stage, last_stage = {}, -1
    for block in arch.blocks:
        staged_conv = isinstance(block, specs.ConvBN) and block.name.startswith("blocks.")  # MobileNetV4's conv rows
        if isinstance(block, _STAGED) or staged_conv:
            j = index_in_stage.get(block.stage, 0)
            index_in_stage[block.stage] = j + 1
            last_stage = max(last_stage, block.stage)
            timm_block = f"blocks.{block.stage}.{j}"
            if staged_conv:
                prefixes[block.name] = (f"{timm_block}.conv", f"{timm_block}.bn1")
                continue
            parts = {specs.DepthwiseSeparable: _DS_PARTS, specs.InvertedResidual: _IR_PARTS,
                     specs.EdgeResidual: _ER_PARTS, specs.UniversalInvertedResidual: _UIR_PARTS,
                     specs.MobileAttention: _ATTENTION_PARTS}[type(block)]
            for part, (conv, bn) in parts.items():
                prefixes[f"{block.name}.{part}"] = (f"{timm_block}.{conv}", f"{timm_block}.{bn}")
            for part, module in _ATTENTION_MODULES.items():  # MobileAttention's, and the UIB's layer scale
                modules[f"{block.name}.{part}"] = f"{timm_block}.{module}"
            if getattr(block, "se", None):
                se_prefixes[block.se.name] = f"{timm_block}.se"
        elif block.name == "final" and arch.name == "mobilenet_v2":  # EfficientNet's head conv, before the pool
            prefixes["final"] = ("conv_head", "bn2")
        elif block.name == "final":  # MobileNetV3/V4's last 1x1 ConvBnAct is timm's last stage
            timm_block = f"blocks.{last_stage + 1}.0"
            prefixes["final"] = (f"{timm_block}.conv", f"{timm_block}.bn1")

    mapping = {}
    for name in specs.canonical_shapes(arch):
        head, leaf = name.rsplit(".", 1)
        if name.startswith("head.conv."):
            mapping[name] = f"conv_head.{leaf}"
        elif name.startswith("head.bn."):  # MobileNetV4's head conv has BatchNorm
            mapping[name] = f"norm_head.{TIMM_BATCHNORM[leaf]}"
        elif head in modules:  # a Conv's weight, a LayerScale's gamma
            mapping[name] = f"{modules[head]}.{leaf}"
        elif head.endswith(".bn") and head[:-3] in modules:  # a Norm (BatchNorm alone)
            mapping[name] = f"{modules[head[:-3]]}.{TIMM_BATCHNORM[leaf]}"
        elif name.startswith("classifier."):
            mapping[name] = name
        elif ".se." in f".{head}." and head.rsplit(".", 1)[0] in se_prefixes:
            se_name, conv = head.rsplit(".", 1)
            mapping[name] = f"{se_prefixes[se_name]}.conv_{conv}.{leaf}"
        else:
            layer, kind = head.rsplit(".", 1)  # kind: conv | bn
            conv_key, bn_key = prefixes[layer]
            mapping[name] = f"{conv_key}.weight" if kind == "conv" else f"{bn_key}.{TIMM_BATCHNORM[leaf]}"
    return mapping


def from_timm(timm_state: dict, arch: specs.Architecture) -> dict:
    """timm state dict (name -> array) -> canonical state; ValueError lists what does not fit."""
    mapping = name_map(arch)
    shapes = expected_shapes(arch)
    found = {k: v for k, v in timm_state.items() if not k.endswith("num_batches_tracked")}
    check(found, {key: shapes[name] for name, key in mapping.items()},
          f"timm weights do not fit {arch.name} width={arch.width} num_classes={arch.head.num_classes}:")
    return {name: np.asarray(timm_state[key], dtype=np.float32) for name, key in mapping.items()}


def to_timm(state: dict, arch: specs.Architecture) -> dict:
    """Canonical state -> timm state dict (float32 arrays, timm's key names)."""
    return {key: np.ascontiguousarray(state[name], dtype=np.float32) for name, key in name_map(arch).items()}


def read_state_dict(path: str) -> dict:
    """A timm checkpoint file as name -> ndarray: .safetensors always, .pth/.pt/.bin when torch is installed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    if path.endswith((".pth", ".pt", ".bin")):
        try:
            import torch
        except ImportError as e:
            raise ValueError(f"{path} is a PyTorch pickle; install torch to read it, or convert it to "
                             f".safetensors first") from e
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        loaded = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
        return {k: v.detach().cpu().numpy() for k, v in loaded.items()}
    raise ValueError(f"{path}: unknown weight file type; expected .safetensors, .pth, .pt or .bin")
