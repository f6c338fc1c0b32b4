"""Mixed precision as the seeds run it on Ascend: AMP level and a fixed or dynamic loss scale.

`mixed_precision.level`: O0 float32; O1 convs and matmuls in float16; O2 everything but
BatchNorm in float16; O3 everything in float16 (mindspore.amp.auto_mixed_precision). Weights
and optimizer state stay float32 whatever the level.

`mixed_precision.loss_scale` and `dynamic_*`: the rule of `mobilenets_core.loss_scale`, as a Cell
whose Parameters are checkpointed with the run.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, amp, nn, ops

from mobilenets_core.loss_scale import LossScaleRule

LEVELS = ("O0", "O1", "O2", "O3")


def apply_level(net: nn.Cell, level: str) -> nn.Cell:
    """`net` with the casts of AMP `level` (O0: unchanged). Parameters keep their names and float32."""
    if level not in LEVELS:
        raise ValueError(f"mixed_precision.level={level!r} is not one of {', '.join(LEVELS)}")
    if level == "O0":
        return net
    return amp.auto_mixed_precision(net, level)


class LossScale(nn.Cell):
    """The loss scale as state: `scale`, finite steps in a row, and the count of skipped steps."""

    def __init__(self, rule: LossScaleRule):
        super().__init__()
        self.dynamic, self.unit, self.factor, self.window = rule.dynamic, rule.unit, rule.factor, rule.window
        self.scale = Parameter(Tensor(rule.initial, ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.overflow_steps = Parameter(Tensor(0, ms.int32), name="overflow_steps", requires_grad=False)

    @classmethod
    def from_config(cls, config) -> LossScale:
        return cls(LossScaleRule.from_config(config))

    def parameters_to_save(self) -> list:
        return [self.scale, self.good_steps, self.overflow_steps]

    def construct(self, finite):
        """Record a step whose gradients were all finite (or not); returns whether it is applied.

        Under a fixed scale a non-finite step halts the state (good_steps = -1): the steps dispatched
        after it, before the loop sees it, are refused too."""
        if not self.dynamic:
            finite = ops.logical_and(finite, self.good_steps >= 0)
            ops.assign(self.good_steps, ops.where(finite, self.good_steps, ops.full_like(self.good_steps, -1)))
        ops.assign(self.overflow_steps, ops.where(finite, self.overflow_steps, self.overflow_steps + 1))
        if self.dynamic:
            good = self.good_steps + 1
            grow = good >= self.window
            grown = ops.where(grow, self.scale * self.factor, self.scale)
            shrunk = ops.maximum(self.scale / self.factor, 1.0)
            ops.assign(self.scale, ops.where(finite, grown, shrunk))
            ops.assign(self.good_steps, ops.where(finite, ops.where(grow, ops.zeros_like(good), good),
                                                  ops.zeros_like(good)))
        return finite


_finite = ops.MultitypeFuncGraph("finite")


@_finite.register("Tensor")
def _finite_one(grad):
    return ops.isfinite(grad).all()


_hyper_map = ops.HyperMap()


def all_finite(grads) -> Tensor:
    """True when every element of every gradient is finite."""
    return ops.stack(_hyper_map(_finite, grads)).all()
