"""Preemption and Ctrl-C: the training loops of both engines stop at a step boundary, checkpoint it
and return, so a rerun continues there."""
from __future__ import annotations

import signal
import threading


class StopOnSignal:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to checkpoint the current step and return
    (after the step, or the evaluation, under way). A second signal does not wait: it restores the
    previous handlers and raises KeyboardInterrupt (SIGINT) or SystemExit(128 + signal) (SIGTERM),
    leaving the checkpoints as they were (a save in flight is never picked half-written)."""

    def __init__(self):
        self.signal = None
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
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False
