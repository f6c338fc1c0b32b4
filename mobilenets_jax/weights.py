"""Flax variables <-> canonical weights (the JAX spoke of the hub in mobilenets_core.weights).

Every canonical name maps to one Flax leaf: 'blocks.3.dw.conv.weight' <->
params['blocks_3']['dw']['conv']['kernel'] (HWIO <-> OIHW), 'classifier.weight' <->
params['classifier']['kernel'] (transposed), '*.bn.mean' / '*.bn.var' <-> batch_stats.
"""
from __future__ import annotations

import os

import numpy as np

from mobilenets_core import specs

_LEAF = {"weight": "kernel", "bias": "bias", "scale": "scale", "mean": "mean", "var": "var"}


def flax_path(name: str) -> tuple:
    """('params' | 'batch_stats', module, ..., leaf) for one canonical name."""
    parts = name.split(".")
    merged = []
    for part in parts[:-1]:
        if part.isdigit() or (merged == ["head"] and part == "conv"):
            merged[-1] = f"{merged[-1]}_{part}"
        else:
            merged.append(part)
    leaf = parts[-1]
    collection = "batch_stats" if leaf in ("mean", "var") else "params"
    return (collection, *merged, _LEAF[leaf])


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


def _leaves(tree: dict, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def to_canonical(variables, arch: specs.Architecture) -> dict:
    """Flax variables -> {canonical name: float32 ndarray}; raises ValueError if they do not match `arch`."""
    flat = {path: value for path, value in _leaves(dict(variables))}
    state, missing = {}, []
    for name in specs.canonical_shapes(arch):
        path = flax_path(name)
        if path not in flat:
            missing.append("/".join(path))
            continue
        # contiguous: writers such as safetensors store the raw buffer of what they are given
        state[name] = np.ascontiguousarray(_to_canonical_layout(np.asarray(flat.pop(path), dtype=np.float32)))
    leftover = ["/".join(map(str, p)) for p in flat]
    if missing or leftover:
        raise ValueError(f"Flax variables do not match {arch.name}: missing {missing[:8]}, unexpected {leftover[:8]}")
    return state


def from_canonical(state: dict, arch: specs.Architecture) -> dict:
    """{canonical name: array} -> Flax variables {'params': ..., 'batch_stats': ...} for `arch`."""
    from mobilenets_core.weights import check_state

    check_state(state, arch)
    variables: dict = {}
    for name in specs.canonical_shapes(arch):
        *parents, leaf = flax_path(name)
        node = variables
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = _to_flax_layout(np.asarray(state[name], dtype=np.float32))
    return variables


def read_workdir(path: str) -> tuple[dict, dict]:
    """(canonical state, model fields) of the newest checkpoint of a JAX workdir."""
    import orbax.checkpoint as ocp

    from mobilenets_core.config_check import ConfigError
    from mobilenets_jax.checkpoints import Checkpoints

    checkpoints = Checkpoints(path, read_only=True)
    step = checkpoints.latest_step()
    if step is None:
        raise ConfigError(f"init.weights={path!r}: no checkpoint in {checkpoints.directory}")
    try:
        restored = checkpoints.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                            meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint, whatever the library's error type
        reason = " ".join(str(e).split())[:300]
        raise ConfigError(f"init.weights={path!r}: checkpoint step {step} in {checkpoints.directory} cannot be read "
                          f"({type(e).__name__}: {reason})") from None
    finally:
        checkpoints.close()
    model = restored.meta["model"]
    arch = specs.build_architecture(model["name"], model["width"], model["groups"], model["num_classes"])
    variables = {"params": restored.state["params"], "batch_stats": restored.state["batch_stats"]}
    return to_canonical(variables, arch), model


def initial_variables(config, module, fresh_variables, say=print):
    """Flax variables for `module` from config.init.weights: the file's tensors where they fit, the
    fresh ones for a classifier of another class count. Updates config.model.bn_eps to the file's.

    `fresh_variables` (Flax variables, or a function returning them) is only used, and only called,
    when the classifier is re-initialised: a file that does not fit is refused before that work."""
    from mobilenets_core import weight_files

    path = config.init.weights
    arch = module.arch
    if os.path.isdir(path):
        state, model = read_workdir(path)
        bn_eps, kind = float(model["bn_eps"]), "JAX workdir"
        weight_files.check_same_network(path, model, state, arch, "by its checkpoint metadata")
    else:
        state, bn_eps, kind = weight_files.read(path, arch)
    fitted, reinit = weight_files.fit(state, arch, f"init.weights={path}")
    if reinit:
        fresh = to_canonical(fresh_variables() if callable(fresh_variables) else fresh_variables, arch)
        fitted.update({name: fresh[name] for name in reinit})
    say(f"initialised from {kind} {path} ({len(fitted) - len(reinit)} tensors)"
        + (f"; classifier re-initialised for {arch.head.num_classes} classes "
           f"(the file has {state['classifier.weight'].shape[0] if 'classifier.weight' in state else 'none'})"
           if reinit else ""))
    return from_canonical(fitted, arch), bn_eps
