"""Flax variable trees <-> canonical weights (a spoke of the canonical hub).

Every canonical name maps to one Flax leaf: 'blocks.3.dw.conv.weight' <->
params['blocks_3']['dw']['conv']['kernel'] (HWIO <-> OIHW), 'classifier.weight' <->
params['classifier']['kernel'] (transposed), '*.bn.mean' / '*.bn.var' <-> batch_stats; 'head.conv.*' and
'head.bn.*' are the modules head_conv and head_bn.
NumPy only: the JAX engine's modules are named so, and a JAX workdir is read without them.
"""
from __future__ import annotations

import numpy as np

from mobilenets_core import specs
from mobilenets_core.weights.tensors import check, check_state, expected_shapes

_FLAX_LEAF = {"weight": "kernel"}  # every other leaf keeps its canonical name


def flax_path(name: str) -> tuple:
    """('params' | 'batch_stats', module, ..., leaf) for one canonical name."""
    parts = name.split(".")
    merged = []
    for part in parts[:-1]:
        if part.isdigit() or (merged == ["head"] and part in ("conv", "bn")):
            merged[-1] = f"{merged[-1]}_{part}"
        else:
            merged.append(part)
    leaf = parts[-1]
    collection = "batch_stats" if leaf in ("mean", "var") else "params"
    return (collection, *merged, _FLAX_LEAF.get(leaf, leaf))


def _to_canonical_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # HWIO -> OIHW
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:  # (in, out) -> (out, in)
        return value.T
    return value


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # OIHW -> HWIO
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def _leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def to_canonical(variables, arch: specs.Architecture) -> dict:
    """Flax variables -> {canonical name: float32 ndarray}; ValueError names what does not match `arch`."""
    names = {flax_path(name): name for name in specs.canonical_shapes(arch)}
    state = {}
    for path, value in _leaves(dict(variables)):
        # contiguous: writers such as safetensors store the raw buffer of what they are given
        value = np.ascontiguousarray(_to_canonical_layout(np.asarray(value, dtype=np.float32)))
        state[names.get(path, "/".join(map(str, path)))] = value
    expected = expected_shapes(arch)
    check(state, expected, f"Flax variables do not match {arch.name} width={arch.width}:")
    return {name: state[name] for name in expected}  # canonical (forward) order


def from_canonical(state: dict, arch: specs.Architecture) -> dict:
    """{canonical name: array} -> Flax variables {'params': ..., 'batch_stats': ...} for `arch`."""
    check_state(state, arch)
    variables: dict = {}
    for name in specs.canonical_shapes(arch):
        *parents, leaf = flax_path(name)
        node = variables
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _to_flax_layout(np.asarray(state[name], dtype=np.float32))
    return variables
