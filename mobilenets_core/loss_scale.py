"""The loss-scale rule both engines apply in their compiled steps (`mixed_precision.*`).

The loss is multiplied by the scale before differentiation and the gradients divided by it after.
A step whose loss or gradients are not all finite is skipped: parameters, optimizer state,
BatchNorm statistics and EMA stay as they were, the step is counted in `overflow_steps`, and the
step number (with it the data position and the learning-rate index) still advances, so a run's
schedule and data order do not depend on how many steps overflowed.

- A fixed scale (`loss_scale` > 0; the seeds: 1024) halts the state at the first such step
  (good_steps = -1: the steps dispatched after it are refused too) and the loop stops the run.
- A dynamic scale (`loss_scale` = 0, MindSpore's DynamicLossScaleUpdateCell rule) starts at
  `dynamic_init`, is divided by `dynamic_factor` on a skipped step (never below 1) and multiplied
  by it after `dynamic_window` finite steps in a row.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class LossScaleRule:
    dynamic: bool
    initial: float  # the scale of the first step
    factor: float
    window: int

    @property
    def unit(self) -> bool:
        """Fixed at 1: nothing to multiply or divide, and nothing to count on the console."""
        return not self.dynamic and self.initial == 1.0

    @classmethod
    def from_config(cls, config) -> LossScaleRule:
        mp = config.mixed_precision
        value = float(mp.loss_scale)
        if value < 0:
            raise ValueError(f"mixed_precision.loss_scale={value} must be >= 0 (0 = dynamic)")
        dynamic = value == 0
        return cls(dynamic, float(mp.dynamic_init) if dynamic else value, float(mp.dynamic_factor),
                   int(mp.dynamic_window))
