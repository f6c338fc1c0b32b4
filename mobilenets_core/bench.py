"""--mode=bench, the part both engines share: the bench.* settings and the timing loop.

Each engine (mobilenets_jax/bench.py, mobilenets_ms/bench.py) builds its real training step and
inference pass on synthetic data and hands them here with a function that waits for a result.
The peers' scripts (benchmarks/peer_timm.py, peer_mindcv.py) time theirs with the same loop.
"""
from __future__ import annotations

import statistics
import time

from mobilenets_core.config_check import ConfigError

DEFAULTS = {"batch_size": 32, "warmup_steps": 2, "steps": 5, "repeats": 3}  # configs/base.py's bench section


def bench_settings(config) -> dict:
    """bench.* with its checks; a config without a bench section gets DEFAULTS."""
    section = config.get("bench", None) or {}
    settings = dict(DEFAULTS)
    settings.update({k: int(section[k]) for k in settings if section.get(k, None) is not None})
    for key, value in settings.items():
        least = 0 if key == "warmup_steps" else 1
        if value < least:
            raise ConfigError(f"bench.{key}={value} must be at least {least}")
    return settings


def median_seconds_per_step(run_step, wait, warmup: int, steps: int, repeats: int) -> tuple[float, float]:
    """(median seconds per step over `repeats` timed runs, seconds of the first warm-up step).

    run_step() launches one step and returns its outputs; wait(outputs) blocks until they exist."""
    first = 0.0
    for i in range(warmup):
        start = time.perf_counter()
        wait(run_step())
        if i == 0:
            first = time.perf_counter() - start
    per_step = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = None
        for _ in range(steps):
            out = run_step()
        wait(out)
        per_step.append((time.perf_counter() - start) / steps)
    return statistics.median(per_step), first
