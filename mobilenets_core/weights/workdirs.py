"""The newest weights of a training workdir, of either engine, read without the engine.

    WORKDIR/checkpoints/<step>/{state,meta}       JAX: Orbax (needs orbax-checkpoint, which needs jax)
    WORKDIR/ms_checkpoints/ckpt_<step>.{ckpt,json} MindSpore: .ckpt + JSON meta (NumPy only)

Each engine's checkpoints.py writes and resumes its own layout, named here once; this module
reads only the network's weights and the meta's ModelInfo, which is what `init.weights`,
`load_model` and `--mode=convert` need from a workdir.
"""
from __future__ import annotations

import json
import os
import re

from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights import flax_tree, mindspore_ckpt
from mobilenets_core.weights.identity import ModelInfo
from mobilenets_core.weights.tensors import expected_shapes

JAX_DIRECTORY = "checkpoints"
MS_DIRECTORY = "ms_checkpoints"
MS_CHECKPOINT = re.compile(r"^ckpt_(\d+)\.ckpt$")
KINDS = {JAX_DIRECTORY: "JAX workdir", MS_DIRECTORY: "MindSpore workdir"}
ENGINES = {JAX_DIRECTORY: "jax", MS_DIRECTORY: "mindspore"}  # the --backend that writes each layout


def orbax_item_handlers() -> dict:
    """The items of a JAX checkpoint, named up front (a read-only manager can then read their metadata)."""
    import orbax.checkpoint as ocp

    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


def ms_steps(directory: str) -> list:
    """The steps of the complete MindSpore checkpoints in `directory` (a save renames its .ckpt last)."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(m.group(1)) for m in map(MS_CHECKPOINT.match, os.listdir(directory)) if m)


def _jax_steps(directory: str) -> list:
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory) if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def holding_checkpoints(path: str) -> list:
    """The checkpoint directories (JAX_DIRECTORY, MS_DIRECTORY) of workdir `path` that hold a checkpoint."""
    return [d for d, steps in ((JAX_DIRECTORY, _jax_steps), (MS_DIRECTORY, ms_steps))
            if steps(os.path.join(path, d))]


def kind(path: str, label: str = "init.weights") -> str:
    """"JAX workdir" or "MindSpore workdir": the engine whose checkpoints the directory holds."""
    found = holding_checkpoints(path)
    if len(found) != 1:
        held = "checkpoints of both engines" if found else "no checkpoints/ or ms_checkpoints/ with a checkpoint"
        raise ConfigError(f"{label}={path!r} is a directory holding {held}; name a workdir of one engine, "
                          f"or one checkpoint file (e.g. {path}/{MS_DIRECTORY}/ckpt_<step>.ckpt)")
    return KINDS[found[0]]


def read(path: str, label: str = "init.weights") -> tuple[dict, ModelInfo, str]:
    """(canonical state, ModelInfo from the checkpoint's meta, kind) of the newest checkpoint in workdir `path`."""
    workdir_kind = kind(path, label)
    is_jax = workdir_kind == "JAX workdir"
    directory = os.path.join(os.path.abspath(path), JAX_DIRECTORY if is_jax else MS_DIRECTORY)
    try:
        found, model = (_read_jax if is_jax else _read_ms)(directory)
        info = ModelInfo.from_dict(model)
        arch = info.architecture()
        state = (flax_tree.to_canonical(found, arch) if is_jax
                 else mindspore_ckpt.to_canonical(found, expected_shapes(arch)))
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint, whatever the library's error type
        reason = " ".join(str(e).split())[:300]
        raise ConfigError(f"{label}={path!r}: the newest checkpoint in {directory} cannot be read "
                          f"({type(e).__name__}: {reason})") from None
    return state, info, workdir_kind


def _read_jax(directory: str) -> tuple[dict, dict]:
    """(Flax variables, meta's model) of the newest checkpoint."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(read_only=True, create=False, enable_async_checkpointing=False,
                                           save_interval_steps=0)
    manager = ocp.CheckpointManager(directory, options=options, item_handlers=orbax_item_handlers())
    try:
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    finally:
        manager.close()
    return {"params": restored.state["params"], "batch_stats": restored.state["batch_stats"]}, restored.meta["model"]


def _read_ms(directory: str) -> tuple[dict, dict]:
    """(MindSpore parameters, meta's model) of the newest checkpoint."""
    step = ms_steps(directory)[-1]
    with open(os.path.join(directory, f"ckpt_{step}.json")) as f:
        model = json.load(f)["model"]
    return mindspore_ckpt.read(os.path.join(directory, f"ckpt_{step}.ckpt")), model
