"""Weights: one canonical format (the hub), its spokes, and the one reader of any weight file.

    identity.py        ModelInfo, the one model identity (files, checkpoint meta, exports, resume checks)
    tensors.py         the one name/shape check and the one BatchNorm name table
    canonical.py       the hub: a .safetensors file of canonical tensors with its ModelInfo
    timm.py            spoke: timm state dicts (.safetensors, .pth)
    mindspore_ckpt.py  spoke: MindSpore .ckpt files, read and written without MindSpore
    mindcv.py          spoke: mindcv's checkpoints (its parameter names; model.convention=mindcv networks)
    flax_tree.py       spoke: Flax variable trees (the JAX engine's, and a JAX workdir's)
    workdirs.py        the newest weights of a JAX or MindSpore training workdir
    hub.py             pretrained weights by name: hf-hub:timm/<model>.<tag> via the Hugging Face cache
    reader.py          any of those -> canonical tensors + ModelInfo (`init.weights`, `load_model`, convert)
    convert.py         --mode=convert

An engine binds canonical tensors to its live objects (Flax variables, MindSpore Parameters);
reading and writing files happens here, framework-free (torch for .pth, orbax for a JAX workdir).
"""
from mobilenets_core.weights.canonical import load, save
from mobilenets_core.weights.identity import ModelInfo
from mobilenets_core.weights.tensors import check_state

__all__ = ["ModelInfo", "check_state", "load", "save"]
