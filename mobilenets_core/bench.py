"""--mode=bench, the part both engines share: the bench.* settings, the synthetic batch, the timing
loop and the result record.

Each engine (mobilenets_jax/bench.py, mobilenets_ms/bench.py) builds its real training step and
inference pass on synthetic data and hands them here with a function that waits for a result.
The peers' scripts (benchmarks/peer_timm.py, peer_mindcv.py) time theirs with the same loop.

With `bench.data` a dataset name ("folder" with dataset.path, or a TFDS name) the training step is
also timed end to end, fed by the real input pipeline through the loop's `on_device` (decode
processes, transfer ahead of the step): `fed_seconds_per_step`. The record then gives both figures
and `data_ms`, the time a step waited for its batch.
"""
from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time

import numpy as np

from mobilenets_core.config_check import ConfigError

DEFAULTS = {"batch_size": 32, "warmup_steps": 2, "steps": 5, "repeats": 3}  # configs/base.py's bench section
SYNTHETIC = "synthetic"


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


def bench_config(config) -> tuple:
    """(a resolved copy of `config` whose train and eval batch are bench.batch_size, the checked bench.* settings)."""
    settings = bench_settings(config)
    config = config.copy_and_resolve_references()
    config.train.batch_size = config.eval.batch_size = settings["batch_size"]
    if fed_data(config):
        config.dataset.name = fed_data(config)
    return config, settings


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


def fed_data(config) -> str | None:
    """The dataset name bench.data names for the end-to-end figure, or None (synthetic data only)."""
    name = str((config.get("bench", None) or {}).get("data", SYNTHETIC) or SYNTHETIC)
    return None if name == SYNTHETIC else name


def fed_seconds_per_step(config, settings: dict, put, run_step, wait, synthetic_step) -> tuple[float, float, float]:
    """(median seconds per training step fed by config.dataset's real pipeline, epoch after epoch with the
    loop's transfer ahead; milliseconds per step spent waiting for data; median seconds per step on the
    synthetic batch). The two are timed in alternation, run by run, so that the machine's drift falls on
    both alike.

    put(local_batch) -> device batch; run_step(device batch) launches a fed step; synthetic_step()
    launches a step on the synthetic batch; wait(outputs) blocks until they exist."""
    from mobilenets_core.data import build_dataset
    from mobilenets_core.loop import InputWait, on_device

    dataset = build_dataset(config, "train")
    batch = settings["batch_size"]

    def host_batches():
        for epoch in range(1 << 30):
            yield from dataset.train_batches(batch, epoch=epoch)

    waited = InputWait()
    feed = on_device(put, host_batches(), wait=waited)
    for _ in range(settings["warmup_steps"]):
        wait(run_step(next(feed)))
    waited.take()

    def timed(launch) -> float:
        start = time.perf_counter()
        out = None
        for _ in range(settings["steps"]):
            out = launch()
        wait(out)
        return (time.perf_counter() - start) / settings["steps"]

    fed, synthetic = [], []
    for _ in range(settings["repeats"]):
        fed.append(timed(lambda: run_step(next(feed))))
        synthetic.append(timed(synthetic_step))
    data_ms = 1000 * waited.take() / (settings["repeats"] * settings["steps"])
    feed.close()
    return statistics.median(fed), data_ms, statistics.median(synthetic)


def synthetic_batch(config) -> tuple[np.ndarray, np.ndarray]:
    """One train.batch_size batch of (float32 NHWC images, int32 labels) from a fixed seed: both engines time
    the same numbers."""
    batch, size = int(config.train.batch_size), int(config.dataset.image_size)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    return images, rng.integers(0, int(config.model.num_classes), batch).astype(np.int32)


def check_loss(loss: float) -> None:
    """A non-finite loss on random data means a broken step, not a slow one: no figure is worth printing."""
    if not np.isfinite(loss):
        raise FloatingPointError(f"bench: the training loss is {loss} on random data; the step is broken")


def process_peak_rss() -> int:
    """The process's peak resident set in bytes (CPU: model, activations, compiler and Python together)."""
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


def result_record(config, settings: dict, *, backend: str, version: str, device: str, device_count: int, dtype: str,
                  train_s: float, train_first_s: float, infer_s: float, infer_first_s: float,
                  device_peak_bytes: int | None = None, engine_fields: dict | None = None,
                  fed: tuple[float, float] | None = None) -> dict:
    """The one JSON line --mode=bench prints (and returns), with the same keys on both engines:
    benchmarks/ and BENCHMARKS.md read them. `device_peak_bytes` is the device allocator's peak where
    the engine reports one, else the process's peak RSS is the memory figure; `engine_fields`
    (conv_impl, ...) go after the memory, `{backend: version}` before the host. `fed` is what
    `fed_seconds_per_step` returns: train_images_per_sec is then the fed figure, beside the synthetic
    one timed in alternation with it (train_s stays the first, separate synthetic measurement)."""
    batch = settings["batch_size"]
    if device_peak_bytes is None:
        memory, memory_source = process_peak_rss(), "process peak RSS"
    else:
        memory, memory_source = int(device_peak_bytes), "device peak_bytes_in_use"
    record = {
        "model": config.model.name, "width": float(config.model.width), "groups": config.model.groups,
        "backend": backend, "device": device, "device_count": device_count,
        "batch_size": batch, "image_size": int(config.dataset.image_size), "dtype": dtype,
        "train_images_per_sec": round(batch / train_s, 2), "infer_images_per_sec": round(batch / infer_s, 2),
        "step_ms": round(1000 * train_s, 2), "infer_ms": round(1000 * infer_s, 2),
        **({} if fed is None else {
            "data": fed_data(config), "train_images_per_sec": round(batch / fed[0], 2),
            "synthetic_train_images_per_sec": round(batch / fed[2], 2), "fed_step_ms": round(1000 * fed[0], 2),
            "data_ms": round(fed[1], 2), "fed_vs_synthetic": round(fed[2] / fed[0], 3)}),
        "peak_memory": memory, "peak_memory_source": memory_source, **(engine_fields or {}),
        "warmup_steps": settings["warmup_steps"], "steps": settings["steps"], "repeats": settings["repeats"],
        "first_train_step_s": round(train_first_s, 2), "first_infer_s": round(infer_first_s, 2),
        backend: version, "host": platform.node(),
    }
    print(json.dumps(record), flush=True)
    return record
