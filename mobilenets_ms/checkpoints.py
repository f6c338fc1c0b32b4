"""MindSpore .ckpt checkpoints of the whole training state in workdir/ms_checkpoints/.

`ckpt_<step>.ckpt` holds the network (parameters and BatchNorm statistics under their Cell
names, so any MindSpore tool or `init.weights` reads it as a network checkpoint), the optimizer
state (`moments.*`, `mean_square.*`, `adam_m.*`, `adam_v.*`, `adam_count`), the EMA weights
(`ema.*`), the loss-scale state and `step`. `ckpt_<step>.json` holds the meta (model fields,
dataset, class names, epoch, image size). The JAX engine owns workdir/checkpoints/; the two never
read each other's directory.

What can go wrong, and what the user can rely on:
- a crash or kill -9 mid-save: both files are written under `.tmp-<step>-<pid>.*` names and
  renamed, the .ckpt last, so `all_steps` never lists a half-written step; what an interrupted
  save left behind is removed by `remove_interrupted_saves` when the workdir is next trained in;
- a save that fails (full disk, permissions) raises `CheckpointError` naming the step and the
  newest complete checkpoint, which is untouched;
- a checkpoint of another model (by its meta) raises `ConfigError` naming what differs, and one
  that cannot be read raises `CheckpointError` naming the step to fall back to.
"""
from __future__ import annotations

import json
import os
import re

import mindspore as ms
import numpy as np

from mobilenets_core.failures import CheckpointError, checkpoint_read_error, checkpoint_write_error
from mobilenets_core.weights import workdirs

_META = re.compile(r"^ckpt_(\d+)\.json$")
_TEMPORARY = ".tmp-"  # prefix of what a save writes before its renames


class Checkpoints:
    def __init__(self, workdir: str, keep: int | None = None, *, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), workdirs.MS_DIRECTORY)
        self.keep = keep
        if not read_only:
            os.makedirs(self.directory, exist_ok=True)

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt_{int(step)}.ckpt")

    def meta_path(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt_{int(step)}.json")

    def all_steps(self) -> list:
        return workdirs.ms_steps(self.directory)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def remove_interrupted_saves(self) -> list:
        """Delete what a save killed before its last rename left: temporary files, and a meta file
        whose checkpoint never arrived. Returns the names removed."""
        if not os.path.isdir(self.directory):
            return []
        steps = set(self.all_steps())
        removed = []
        for name in sorted(os.listdir(self.directory)):
            meta = _META.match(name)
            if name.startswith(_TEMPORARY) or (meta and int(meta.group(1)) not in steps):
                os.remove(os.path.join(self.directory, name))
                removed.append(name)
        return removed

    def save(self, step: int, tensors: dict, meta: dict) -> str:
        """Write {name: Parameter | Tensor | ndarray} and `meta` as checkpoint `step`; prune to `keep`.

        Raises CheckpointError if the files cannot be written; the checkpoints already there stay."""
        step = int(step)
        stem = os.path.join(self.directory, f"{_TEMPORARY}{step}-{os.getpid()}")
        committed = False
        try:
            with open(stem + ".json", "w") as f:
                json.dump({**meta, "step": step}, f)
            records = [{"name": name, "data": value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))}
                       for name, value in tensors.items()]
            ms.save_checkpoint(records, stem + ".ckpt")
            with open(stem + ".ckpt", "rb") as f:  # on disk before it gets its name, not only in the page cache
                os.fsync(f.fileno())
            os.replace(stem + ".json", self.meta_path(step))
            os.replace(stem + ".ckpt", self.path(step))
            committed = True
        except Exception as e:  # noqa: BLE001 - any failure of the writer is reported the same way
            raise self._write_error(step, e) from e
        finally:
            if not committed:
                self._remove_quietly(stem + ".json", stem + ".ckpt", stem + ".tmp")
                if step not in self.all_steps():
                    self._remove_quietly(self.meta_path(step))
        if self.keep:
            for old in self.all_steps()[:-int(self.keep)]:
                self._remove_quietly(self.path(old), self.meta_path(old))
        return self.path(step)

    @staticmethod
    def _remove_quietly(*paths):
        for path in paths:
            try:
                os.remove(path)
            except OSError:
                pass

    def _write_error(self, step: int, error: BaseException) -> CheckpointError:
        return checkpoint_write_error(self.directory, step, error, self.all_steps())

    def _read_error(self, step: int, error: BaseException) -> CheckpointError:
        return checkpoint_read_error(self.directory, step, error, self.path(step), self.all_steps())

    def meta(self, step: int) -> dict:
        """The meta of checkpoint `step` ({} for a .ckpt without its .json)."""
        if not os.path.exists(self.meta_path(step)):
            return {}
        try:
            with open(self.meta_path(step)) as f:
                meta = json.load(f)
            if not isinstance(meta, dict):
                raise ValueError(f"{self.meta_path(step)} holds {type(meta).__name__}, not an object")
        except (OSError, ValueError) as e:
            raise self._read_error(step, e) from e
        return meta

    def restore(self, step: int) -> tuple[dict, dict]:
        """({name: ndarray}, meta) of checkpoint `step`; CheckpointError if it cannot be read."""
        if int(step) not in self.all_steps():
            raise ValueError(f"no checkpoint at step {step} in {self.directory}; available: {self.all_steps()}")
        meta = self.meta(step)
        try:
            params = ms.load_checkpoint(self.path(step))
            tensors = {name: p.asnumpy() for name, p in params.items()}
        except Exception as e:  # noqa: BLE001 - a damaged file, whatever MindSpore's error type
            raise self._read_error(step, e) from e
        return tensors, meta
