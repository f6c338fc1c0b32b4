"""The learning rate at every step, as plain NumPy: the one schedule both engines use.

`lr_table(config, steps_per_epoch)` returns a float32 array with the rate of every update of
the run (update s, counting from 0, uses table[s]). The JAX engine indexes it inside the
jitted step; the MindSpore engine hands the same array to its optimizer. Warm-up is linear
from `schedule.init_lr` to `optimizer.learning_rate` over `schedule.warmup_epochs`; the decay
named by `schedule.name` then runs over the remaining steps:

  cosine       end + (peak - end) * (1 + cos(pi * t)) / 2            t: 0 -> 1 after warm-up
  linear       end + (peak - end) * (1 - t)
  poly         end + (peak - end) * (1 - t) ** 2                       (MindSpore zoo "poly")
  exponential  peak * decay_rate ** floor(steps after warm-up / (decay_epochs * steps_per_epoch))
  constant     peak
"""
from __future__ import annotations

import math

import numpy as np

from mobilenets_core.config_check import ConfigError

SCHEDULES = ("cosine", "linear", "poly", "exponential", "constant")


def lr_table(config, steps_per_epoch: int) -> np.ndarray:
    s, peak = config.schedule, float(config.optimizer.learning_rate)
    total = int(config.train.epochs) * int(steps_per_epoch)
    warmup = int(round(float(s.warmup_epochs) * steps_per_epoch))
    return lr_values(s.name, peak, total, warmup, steps_per_epoch, init_lr=float(s.init_lr),
                     end_lr=float(s.end_lr), decay_epochs=float(s.decay_epochs), decay_rate=float(s.decay_rate))


def lr_values(name: str, peak: float, total_steps: int, warmup_steps: int, steps_per_epoch: int, *,
              init_lr: float = 0.0, end_lr: float = 0.0, decay_epochs: float = 2.4,
              decay_rate: float = 0.97) -> np.ndarray:
    if name not in SCHEDULES:
        raise ConfigError(f"schedule.name={name!r} is not known; choose one of {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise ConfigError(f"the run has {total_steps} steps; train.epochs and the dataset must give at least one")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"schedule.warmup_epochs gives {warmup_steps} warm-up steps, more than the "
                         f"{total_steps} steps of the run; lower it below train.epochs")
    step = np.arange(total_steps, dtype=np.float64)
    lr = np.empty(total_steps, dtype=np.float64)
    warm = step < warmup_steps
    lr[warm] = init_lr + (peak - init_lr) * step[warm] / max(warmup_steps, 1)
    after = step[~warm] - warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = after / span
    if name == "cosine":
        decayed = end_lr + (peak - end_lr) * 0.5 * (1.0 + np.cos(math.pi * t))
    elif name == "linear":
        decayed = end_lr + (peak - end_lr) * (1.0 - t)
    elif name == "poly":
        decayed = end_lr + (peak - end_lr) * (1.0 - t) ** 2
    elif name == "exponential":
        every = max(decay_epochs * steps_per_epoch, 1.0)
        decayed = peak * decay_rate ** np.floor(after / every)
    else:
        decayed = np.full_like(after, peak)
    lr[~warm] = decayed
    return lr.astype(np.float32)
