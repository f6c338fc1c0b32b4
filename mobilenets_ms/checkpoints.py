"""MindSpore .ckpt checkpoints of the whole training state in workdir/ms_checkpoints/.

`ckpt_<step>.ckpt` holds the network (parameters and BatchNorm statistics under their Cell
names, so any MindSpore tool or `init.weights` reads it as a network checkpoint), the optimizer
state (`moments.*`, `mean_square.*`, `adam_m.*`, `adam_v.*`, `adam_count`), the EMA weights
(`ema.*`), the loss-scale state and `step`. `ckpt_<step>.json` holds the meta (model fields,
dataset, class names, epoch, image size). Both are written to a temporary name and renamed, the
.ckpt last, so a crash never leaves a step that `latest_step` would pick half-written. The JAX
engine owns workdir/checkpoints/; the two never read each other's directory.
"""
from __future__ import annotations

import json
import os
import re

import mindspore as ms
import numpy as np

_NAME = re.compile(r"^ckpt_(\d+)\.ckpt$")


class Checkpoints:
    def __init__(self, workdir: str, keep: int | None = None, *, read_only: bool = False):
        self.directory = os.path.join(os.path.abspath(workdir), "ms_checkpoints")
        self.keep = keep
        if not read_only:
            os.makedirs(self.directory, exist_ok=True)

    def path(self, step: int) -> str:
        return os.path.join(self.directory, f"ckpt_{int(step)}.ckpt")

    def all_steps(self) -> list:
        if not os.path.isdir(self.directory):
            return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(self.directory)) if m)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, tensors: dict, meta: dict) -> str:
        """Write {name: Parameter | Tensor | ndarray} and `meta` as checkpoint `step`; prune to `keep`."""
        step = int(step)
        stem = os.path.join(self.directory, f".tmp-{step}-{os.getpid()}")
        with open(stem + ".json", "w") as f:
            json.dump({**meta, "step": step}, f)
        os.replace(stem + ".json", self.path(step)[:-len(".ckpt")] + ".json")
        records = [{"name": name, "data": value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))}
                   for name, value in tensors.items()]
        ms.save_checkpoint(records, stem + ".ckpt")
        os.replace(stem + ".ckpt", self.path(step))
        if self.keep:
            for old in self.all_steps()[:-int(self.keep)]:
                for suffix in (".ckpt", ".json"):
                    target = self.path(old)[:-len(".ckpt")] + suffix
                    if os.path.exists(target):
                        os.remove(target)
        return self.path(step)

    def restore(self, step: int) -> tuple[dict, dict]:
        """({name: ndarray}, meta) of checkpoint `step`."""
        if int(step) not in self.all_steps():
            raise ValueError(f"no checkpoint at step {step} in {self.directory}; available: {self.all_steps()}")
        params = ms.load_checkpoint(self.path(step))
        tensors = {name: p.asnumpy() for name, p in params.items()}
        meta_path = self.path(step)[:-len(".ckpt")] + ".json"
        meta = {}
        if os.path.exists(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        return tensors, meta
