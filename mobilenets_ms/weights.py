"""MindSpore Cells <-> canonical weights (the MindSpore spoke of the hub in mobilenets_core.weights).

Cell attributes already follow the canonical names and MindSpore keeps conv weights OIHW and
Dense weights (out, in), so the mapping is a rename of BatchNorm's parameters only:

    <layer>.bn.gamma -> <layer>.bn.scale        <layer>.bn.moving_mean     -> <layer>.bn.mean
    <layer>.bn.beta  -> <layer>.bn.bias         <layer>.bn.moving_variance -> <layer>.bn.var

every other parameter keeps its name (`blocks.3.dw.conv.weight`, `blocks.3.se.reduce.bias`,
`head.conv.weight`, `classifier.weight`, ...).
"""
from __future__ import annotations

import numpy as np

from mobilenets_core import specs
from mobilenets_core import weights as canonical

_BN_RENAMES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}


def canonical_name(cell_name: str) -> str:
    """MindSpore parameter path -> canonical tensor name."""
    parent, _, leaf = cell_name.rpartition(".")
    if parent.endswith(".bn") or parent == "bn":
        if leaf not in _BN_RENAMES:
            raise ValueError(f"BatchNorm parameter {cell_name!r} has no canonical name "
                             f"(expected one of {', '.join(_BN_RENAMES)})")
        return f"{parent}.{_BN_RENAMES[leaf]}"
    return cell_name


def _architecture(net) -> specs.Architecture:
    arch = getattr(net, "arch", None)
    if not isinstance(arch, specs.Architecture):
        raise ValueError(f"{type(net).__name__} is not a mobilenets_ms network (no `arch` attribute); "
                         f"build it with mobilenets_ms.load_model or mobilenets_ms.models.build_network")
    return arch


def canonical_parameters(net) -> dict:
    """{canonical name: mindspore Parameter} covering exactly `specs.canonical_shapes(net.arch)`.

    Raises ValueError listing every canonical tensor the Cell lacks and every Cell parameter
    that has no canonical counterpart."""
    arch = _architecture(net)
    expected = specs.canonical_shapes(arch)
    params = {}
    for cell_name, param in net.parameters_and_names():
        params[canonical_name(cell_name)] = param
    missing = [n for n in expected if n not in params]
    leftover = [n for n in params if n not in expected]
    wrong = [f"{n}: {tuple(params[n].shape)} != {expected[n][0]}"
             for n in expected if n in params and tuple(params[n].shape) != tuple(expected[n][0])]
    if missing or leftover or wrong:
        raise ValueError(f"MindSpore network does not match the canonical layout of {arch.name}: "
                         f"missing {missing[:8]}, unexpected {leftover[:8]}, shape mismatch {wrong[:8]}")
    return {name: params[name] for name in expected}  # canonical (forward) order


def to_canonical(net) -> dict:
    """Network -> {canonical name: float32 ndarray} (conv OIHW, dense (out, in), BN scale/bias/mean/var)."""
    return {name: np.asarray(param.asnumpy(), dtype=np.float32).copy()
            for name, param in canonical_parameters(net).items()}


def load_canonical(net, state: dict) -> None:
    """Copy a canonical state into `net` in place; ValueError names every missing, unexpected
    or wrongly shaped tensor before anything is written."""
    import mindspore as ms

    arch = _architecture(net)
    canonical.check_state(state, arch)
    params = canonical_parameters(net)
    for name, param in params.items():
        value = np.ascontiguousarray(np.asarray(state[name], dtype=np.float32))
        param.set_data(ms.Tensor(value, dtype=param.dtype))
