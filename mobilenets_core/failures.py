"""Why a run stopped, when the reason is something the user can act on (not a bug).

main.py prints these as one `error: ...` line instead of a traceback; the message names what
happened, at which step, what in the workdir is still good, and what to do next. Config mistakes
have their own class, `config_check.ConfigError`.
"""
from __future__ import annotations


class RunError(RuntimeError):
    """A run stopped for a reason outside the code: bad numbers, a disk that refused a write."""


class NonFiniteLoss(RunError, FloatingPointError):
    """The loss or the gradients of a step were NaN or infinite and no dynamic loss scale absorbs it."""


class CheckpointError(RunError):
    """A checkpoint could not be written, or one in the workdir cannot be read."""
