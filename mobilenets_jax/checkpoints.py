"""Orbax checkpoints of the whole training state in workdir/checkpoints/<step>/.

Each checkpoint holds the TrainState (params, batch_stats, opt_state, EMA, step, rng) and a JSON
`meta` item (model, dataset, class names, epoch). Saves are asynchronous; Orbax writes each step
to a temporary directory and renames it when complete, so a crash never leaves a half-written
step that `latest_step` would pick.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, workdir: str, keep: int | None = None, *, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               enable_async_checkpointing=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, target):
        """(state shaped and sharded like `target`, meta) of checkpoint `step`."""
        if step not in self.manager.all_steps():
            raise ValueError(f"no checkpoint at step {step} in {self.directory}; available: {self.all_steps()}")
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                      meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
