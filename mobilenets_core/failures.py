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


def first_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, what a one-line report quotes of a library's error, without
    TensorStore's spec dumps. Orbax wraps TensorStore's reason ("Error reading <file>: ...") in an
    error that only says "see full TensorStore details"; the reason is quoted instead."""
    while _TENSORSTORE_WRAPPER in str(error) and error.__cause__ is not None:
        error = error.__cause__
    text = (str(error).strip().splitlines() or [""])[0].split(_TENSORSTORE_WRAPPER)[0]
    text = text.split(" [tensorstore_spec=")[0]
    return f"{type(error).__name__}: {text[:limit]}"


_TENSORSTORE_WRAPPER = " See full TensorStore details"


def checkpoint_write_error(directory: str, step, error: BaseException, complete: list) -> CheckpointError:
    """A save of `step` failed; `complete` are the steps on disk that are still good."""
    good = [s for s in complete if s != step]
    kept = (f"the newest complete checkpoint, step {good[-1]}, is intact" if good else
            "there is no complete checkpoint yet")
    return CheckpointError(f"could not write checkpoint step {step} to {directory} ({first_line(error)}); {kept}. "
                           f"Free disk space or fix the permissions of the workdir, then run again to resume")


def checkpoint_read_error(directory: str, step, error: BaseException, path: str, complete: list) -> CheckpointError:
    """Checkpoint `step` (at `path`) cannot be read; `complete` are the steps on disk."""
    others = [s for s in complete if s != step]
    return CheckpointError(f"checkpoint step {step} in {directory} cannot be read ({first_line(error)}); "
                           f"move {path} out of the way to use "
                           + (f"step {others[-1]} (available: {others})" if others else "a fresh start"))

