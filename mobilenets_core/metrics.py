"""Metric names and where they go: workdir/metrics.jsonl, TensorBoard, and the console.

The loop both engines run (mobilenets_core.loop) reports through `MetricsWriter`, so a line means
the same whichever engine wrote it:

  step            number of optimizer updates done when the line was written
  epoch           1-based epoch the line belongs to
  split           "train" (mean over the steps since the previous train line) or "eval"
  loss            mean cross-entropy (with label smoothing when training)
  top1, top5      accuracy in [0, 1]
  lr              learning rate of the last update (train lines)
  images_per_sec  training images per second over the logged steps (eval: evaluation throughput)
  step_ms         wall-clock milliseconds per step over the logged steps
  data_ms         (train) of those, milliseconds per step the loop waited for the input pipeline
  overflow_steps  (train) steps refused as non-finite over the whole run so far
"""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from mobilenets_core import atomic_files
from mobilenets_core.failures import RunError

REQUIRED_KEYS = ("step", "epoch", "split", "loss", "top1", "top5", "lr", "images_per_sec", "step_ms")


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per-example 1.0 where the label is among the k highest logits (NumPy reference)."""
    top = np.argsort(-logits, axis=-1)[:, :k]
    return (top == labels[:, None]).any(axis=-1).astype(np.float32)


METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends one JSON object per line to workdir/metrics.jsonl and mirrors scalars to TensorBoard.

    Only process 0 of a multi-host run writes; the others accept calls and do nothing."""

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        missing = [k for k in REQUIRED_KEYS if k not in record]
        if missing:
            raise ValueError(f"metrics record lacks {missing}")
        clean = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in record.items()}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(clean) + "\n")
            if self._tb is not None:
                for key, value in clean.items():
                    if key not in ("step", "epoch", "split") and isinstance(value, (int, float)) and math.isfinite(value):
                        self._tb.add_scalar(f"{clean['split']}/{key}", value, clean["step"])
                self._tb.flush()
        except OSError as e:  # a full disk or a read-only workdir: one line, not a traceback
            raise RunError(f"could not write the step-{clean['step']} {clean['split']} record to {self.path} "
                           f"({e.strerror or e}); free disk space or fix the permissions of the workdir, then "
                           f"run again to resume from the newest checkpoint") from e

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str) -> list:
    """Every record of workdir/metrics.jsonl; a last line cut short by a kill is left out."""
    return _read_records(os.path.join(workdir, METRICS_FILE))[0]


def _read_records(path: str) -> tuple:
    """(records, number of lines that are not JSON objects: a line cut short by a kill mid-write, or
    anything else that is no record)."""
    if not os.path.exists(path):
        return [], 0
    records, broken = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                broken += 1
    return records, broken


def truncate_after(workdir: str, step: int) -> int:
    """Keep the records of workdir/metrics.jsonl up to `step`, the step a run resumes from; returns
    how many lines were dropped. A run killed after its newest checkpoint wrote lines for steps it
    will train again, and perhaps half a line: without this they would appear twice. The file is
    replaced atomically, so a kill here loses nothing either."""
    path = os.path.join(workdir, METRICS_FILE)
    records, broken = _read_records(path)
    kept = [r for r in records if not isinstance(r.get("step"), (int, float)) or r["step"] <= step]
    dropped = len(records) - len(kept) + broken
    if dropped:
        atomic_files.write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return dropped


def epoch_line(epoch: int, epoch_seconds: float, steps: int, avg_loss: float) -> str:
    """The seeds' per-epoch console line."""
    return (f"epoch {epoch}: epoch time: {epoch_seconds * 1000:.3f}, per step time: "
            f"{epoch_seconds * 1000 / max(steps, 1):.3f}, avg loss: {avg_loss:.3f}")


def eval_line(result: dict, checkpoint: str) -> str:
    """The seeds' eval line: result: {'Loss': ..., 'Top_1_Acc': ..., 'Top_5_Acc': ...} ckpt=..."""
    shown = {"Loss": float(result["loss"]), "Top_1_Acc": float(result["top1"]), "Top_5_Acc": float(result["top5"])}
    return f"result: {shown} ckpt={checkpoint}"


class Stopwatch:
    """Seconds since start (or the last `lap`), for throughput lines."""

    def __init__(self):
        self.start = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.start = now - self.start, now
        return elapsed
