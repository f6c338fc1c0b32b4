"""MindSpore Cells <-> canonical tensors (files are read and written in mobilenets_core.weights).

Cell attributes follow the canonical names and MindSpore keeps conv weights OIHW and Dense
weights (out, in), so a Parameter's canonical name is its own with BatchNorm's gamma / beta /
moving_mean / moving_variance renamed (`mobilenets_core.weights.mindspore_ckpt.canonical_name`).
"""
from __future__ import annotations

import numpy as np

from mobilenets_core import specs
from mobilenets_core.weights.mindspore_ckpt import canonical_name
from mobilenets_core.weights.tensors import check, check_state, expected_shapes


def _architecture(net) -> specs.Architecture:
    arch = getattr(net, "arch", None)
    if not isinstance(arch, specs.Architecture):
        raise ValueError(f"{type(net).__name__} is not a mobilenets_ms network (no `arch` attribute); "
                         f"build it with mobilenets_ms.load_model or mobilenets_ms.models.build_network")
    return arch


def canonical_parameters(net) -> dict:
    """{canonical name: mindspore Parameter} covering exactly `specs.canonical_shapes(net.arch)`;
    ValueError names every tensor the Cell lacks, has in excess, or has in another shape."""
    arch = _architecture(net)
    params = {canonical_name(cell_name): param for cell_name, param in net.parameters_and_names()}
    expected = expected_shapes(arch)
    check(params, expected, f"MindSpore network does not match the canonical layout of {arch.name}:")
    return {name: params[name] for name in expected}  # canonical (forward) order


def to_canonical(net) -> dict:
    """Network -> {canonical name: float32 ndarray} (conv OIHW, dense (out, in), BN scale/bias/mean/var)."""
    return {name: np.asarray(param.asnumpy(), dtype=np.float32).copy()
            for name, param in canonical_parameters(net).items()}


def load_canonical(net, state: dict, *, partial: bool = False) -> None:
    """Copy canonical tensors into `net` in place, after checking them all (nothing is written on a
    mismatch). `partial`: a subset is fine (a classifier left to its fresh initialisation)."""
    import mindspore as ms

    params = canonical_parameters(net)
    if not partial:
        check_state(state, net.arch)
    for name, value in state.items():
        param = params[name]
        param.set_data(ms.Tensor(np.ascontiguousarray(np.asarray(value, dtype=np.float32)), dtype=param.dtype))
