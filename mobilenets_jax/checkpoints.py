"""Orbax checkpoints of the whole training state in workdir/checkpoints/<step>/.

Each checkpoint holds the TrainState (params, batch_stats, opt_state, EMA, step, rng) and a JSON
`meta` item (model, dataset, class names, epoch). Saves are asynchronous; Orbax writes each step
to `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only when every file is written, so a
crash or a kill -9 mid-save never leaves a half-written step that `latest_step` would pick (the
leftover temporary directory is removed when the workdir is next opened for training).

What can go wrong is reported in one line, before anything is overwritten:
- a save that fails (full disk, permissions) raises `CheckpointError` naming the step and the newest
  complete checkpoint, which Orbax leaves in place; the failed step's temporary directory is removed;
- a checkpoint of another model or another training state (optimizer, EMA) raises `ConfigError`
  naming what differs, and one that cannot be read raises `CheckpointError`.
Orbax reads and writes through asyncio event loops of its own; when a read or write fails, TensorStore
callbacks still in flight find their loop closed and Python would print "RuntimeError: Event loop is
closed" for each of them (hundreds on a full disk). Those echoes of the failure already reported are
dropped (`_drop_closed_loop_echoes`); any other unraisable exception is printed as before.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import sys
import time

import jax
import orbax.checkpoint as ocp

from mobilenets_core.config_check import ConfigError
from mobilenets_core.failures import CheckpointError, checkpoint_read_error, checkpoint_write_error
from mobilenets_core.weights import identity, workdirs
from mobilenets_core.weights.tensors import compare

# TrainState fields a checkpoint written before they existed may lack; they restore fresh.
FRESH_IF_MISSING = ("loss_scale",)
TEMPORARY_SUFFIX = ".orbax-checkpoint-tmp"  # what Orbax writes a step under before its rename


def _is_closed_loop_echo(unraisable) -> bool:
    error = unraisable.exc_value
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _drop_closed_loop_echoes() -> None:
    """Install (once) an unraisable-exception hook that drops Orbax's closed-event-loop echoes."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_echoes", False):
        return

    def hook(unraisable):
        if not _is_closed_loop_echo(unraisable):
            previous(unraisable)

    hook.drops_closed_loop_echoes = True
    sys.unraisablehook = hook


def _path(key: tuple) -> str:
    return "/".join(map(str, key))


class Checkpoints:
    def __init__(self, workdir: str, keep: int | None = None, *, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), workdirs.JAX_DIRECTORY)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               enable_async_checkpointing=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        # Handlers named up front, so that a read-only manager can read a checkpoint's tree metadata.
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_handlers=workdirs.orbax_item_handlers())
        self._pending = None  # step of the asynchronous save in flight
        _drop_closed_loop_echoes()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list:
        return list(self.manager.all_steps())

    def complete_steps(self) -> list:
        """The steps whose directories are complete on disk now (not the manager's cached list)."""
        return sorted(ocp.path.step.checkpoint_steps(self.directory)) if os.path.isdir(self.directory) else []

    def remove_interrupted_saves(self, step: int | None = None) -> list:
        """Delete the temporary directories of saves that did not finish (of `step` only, if given);
        never a complete checkpoint. Returns the names removed."""
        pattern = f"{'*' if step is None else step}{TEMPORARY_SUFFIX}*"
        removed = sorted(glob.glob(os.path.join(glob.escape(self.directory), pattern)))
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        return [os.path.basename(p) for p in removed]

    def save(self, step: int, state, meta: dict) -> None:
        """Start an asynchronous save; a failure of the previous save is raised here, naming its step."""
        self.wait()
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # noqa: BLE001 - any failure of the writer is reported the same way
            raise self._write_error(step, e) from e
        self._pending = step

    def _write_error(self, step, error: BaseException) -> CheckpointError:
        """The one-line report of a failed save of `step`, after removing what it left half-written.

        Orbax reports the first failing item while TensorStore writes of the others are still
        landing (and may recreate the directory), so the manager is closed first and the removal
        repeated until the directory stays gone."""
        if step is not None:
            with contextlib.suppress(Exception):
                self.manager.close()
            deadline = time.monotonic() + 5.0
            while self.remove_interrupted_saves(step) and time.monotonic() < deadline:
                time.sleep(0.2)
        return checkpoint_write_error(self.directory, step, error, self.complete_steps())

    def meta(self, step: int) -> dict:
        """The JSON `meta` item of checkpoint `step` (model, dataset, class names, epoch)."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # noqa: BLE001
            raise self._read_error(step, e) from e

    def _read_error(self, step, error: BaseException) -> CheckpointError:
        return checkpoint_read_error(self.directory, step, error, f"{self.directory}/{step}", self.complete_steps())

    def restore(self, step: int, target):
        """(state shaped and sharded like `target`, meta) of checkpoint `step`.

        `target` is a state or its abstract shapes (jax.ShapeDtypeStruct with shardings); any
        difference of the saved tree from it is refused listing the tensors (the loop has compared
        the networks by their meta first: resume_checks)."""
        if step not in self.manager.all_steps():
            raise ConfigError(f"no checkpoint at step {step} in {self.directory}; available: {self.all_steps()}")
        meta = self.meta(step)
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        fresh = self._check_structure(step, abstract, meta)
        restore_target = abstract
        if fresh:  # an older checkpoint without these fields: restore the rest, keep the target's
            fields = abstract if isinstance(abstract, dict) else {n: getattr(abstract, n) for n in
                                                                  abstract.__dataclass_fields__}
            restore_target = {name: value for name, value in fields.items() if name not in fresh}
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(restore_target)))
        except Exception as e:  # noqa: BLE001 - a damaged checkpoint, whatever the library's error type
            raise self._read_error(step, e) from e
        state = restored.state
        if fresh:
            state = target.replace(**state) if not isinstance(target, dict) else {**target, **state}
        return state, meta

    def _check_structure(self, step: int, abstract, meta: dict) -> tuple:
        """Raise ConfigError naming the tensors that differ between checkpoint `step` and `abstract`;
        returns the FRESH_IF_MISSING fields the checkpoint lacks."""
        try:
            saved = ocp.tree.to_flat_dict(self.manager.item_metadata(step)["state"].tree)
        except Exception as e:  # noqa: BLE001
            raise self._read_error(step, e) from e
        wanted = ocp.tree.to_flat_dict(abstract)
        fresh = tuple(f for f in FRESH_IF_MISSING
                      if any(k[0] == f for k in wanted) and not any(k[0] == f for k in saved))
        mismatch = compare({_path(k): v for k, v in saved.items()},
                           {_path(k): v.shape for k, v in wanted.items() if k[0] not in fresh})
        missing, unexpected, wrong = mismatch.missing, mismatch.unexpected, mismatch.wrong
        if mismatch:
            model = meta.get("model") or {}
            parts = [f"{len(items)} {what} (first: {items[0]})" for what, items in (
                ("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if items]
            raise ConfigError(
                f"checkpoint step {step} in {self.directory} ("
                + " ".join(f"{k}={model[k]}" for k in identity.SHAPE_FIELDS if k in model)
                + ") does not fit this config's training state: " + "; ".join(parts)
                + ". It was written with other settings (model.*, optimizer.name, ema.decay, init.freeze): "
                  "use those to resume, or another --workdir")
        return fresh

    def wait(self) -> None:
        """Block until the save in flight is on disk; raises CheckpointError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            step, self._pending = self._pending, None
            raise self._write_error(step, e) from e
        self._pending = None

    def close(self) -> None:
        try:
            self.wait()
        except CheckpointError:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - the failure was reported above; it would only repeat
                pass
            raise
        self.manager.close()
