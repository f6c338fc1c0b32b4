"""Preemption and Ctrl-C: the training loops of both engines stop at a step boundary, checkpoint it
and return, so a rerun continues there."""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable


class StopOnSignal:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to checkpoint the current step and return
    (after the step, or the evaluation, under way).

    A second signal does not wait for anything: it calls `abandon` (which removes the files of a
    save in flight, never a complete checkpoint), prints one line and ends the process with status
    128 + signal. The process ends at once (os._exit) because unwinding would wait for, or break
    with tracebacks, the checkpoint writer threads of the save under way."""

    def __init__(self, abandon: Callable[[], object] | None = None):
        self.signal = None
        self.abandon = abandon
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        if self.signal is None:
            self.signal = signum
            return
        self._restore()
        if self.abandon is not None:
            try:
                self.abandon()
            except Exception:  # noqa: BLE001 - what is left of a save is removed on the next start anyway
                pass
        sys.stdout.flush()
        sys.stderr.write(f"stopped at once by a second {signal.Signals(signum).name}: this step is not "
                         f"checkpointed; run again to resume from the newest complete checkpoint\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False
