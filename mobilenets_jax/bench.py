"""--mode=bench on the JAX engine: training and inference throughput on synthetic data.

Times the engine's real jitted training step (`mobilenets_jax.train.Trainer.train_step`:
forward, backward, optimizer update, EMA, metrics, donated state) and a jitted inference
forward pass, on one random batch that stays on the device, so no input pipeline (and no
TensorFlow) is involved. Each figure is the median over `bench.repeats` runs of `bench.steps`
steps, after `bench.warmup_steps` steps that also absorb compilation. Prints one JSON line.
"""
from __future__ import annotations

import json
import platform
import resource
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mobilenets_core.bench import bench_settings, median_seconds_per_step
from mobilenets_jax import layers
from mobilenets_jax.train import Trainer

RESULT_KEYS = ("model", "backend", "device", "batch_size", "image_size", "dtype", "train_images_per_sec",
               "infer_images_per_sec", "step_ms", "peak_memory")


def peak_memory() -> tuple[int, str]:
    """(bytes, what was measured): the device allocator's peak where it reports one, else the
    process's peak resident set (CPU: model, activations, compiler and Python together)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale, "process peak RSS"


def bench(config, workdir: str | None = None) -> dict:
    """Measure `config`'s model on this host's devices; prints and returns the result record."""
    del workdir  # nothing is read or written
    settings = bench_settings(config)
    batch, size = settings["batch_size"], int(config.dataset.image_size)
    config = config.copy_and_resolve_references()
    config.train.batch_size = config.eval.batch_size = batch
    trainer = Trainer(config, steps_per_epoch=1)
    state = trainer.init_state(int(config.train.seed))

    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    labels = rng.integers(0, int(config.model.num_classes), batch).astype(np.int32)
    train_batch = trainer.to_global({"image": images, "label": labels})

    def train_step():
        nonlocal state
        state, metrics = trainer.train_step(state, train_batch)
        return metrics["loss"]

    warmup, steps, repeats = settings["warmup_steps"], settings["steps"], settings["repeats"]
    train_s, train_first_s = median_seconds_per_step(train_step, jax.block_until_ready, warmup, steps, repeats)
    loss = float(train_step())
    if not np.isfinite(loss):
        raise FloatingPointError(f"bench: the training loss is {loss} on random data; the step is broken")

    module = trainer.module
    infer = jax.jit(lambda params, stats, x: module.apply({"params": params, "batch_stats": stats}, x, train=False),
                    in_shardings=(trainer.replicated, trainer.replicated, trainer.batch_sharding))
    infer_images = train_batch["image"]
    infer_s, infer_first_s = median_seconds_per_step(lambda: infer(state.params, state.batch_stats, infer_images),
                                                     jax.block_until_ready, warmup, steps, repeats)
    memory, memory_source = peak_memory()
    device = jax.devices()[0]
    result = {
        "model": config.model.name, "width": float(config.model.width), "groups": config.model.groups,
        "backend": "jax", "device": f"{device.platform}:{device.device_kind}", "device_count": jax.device_count(),
        "batch_size": batch, "image_size": size, "dtype": str(config.train.dtype),
        "train_images_per_sec": round(batch / train_s, 2), "infer_images_per_sec": round(batch / infer_s, 2),
        "step_ms": round(1000 * train_s, 2), "infer_ms": round(1000 * infer_s, 2),
        "peak_memory": memory, "peak_memory_source": memory_source,
        "conv_impl": layers.resolve_impl(module.conv_impl), "warmup_steps": warmup, "steps": steps,
        "repeats": repeats, "first_train_step_s": round(train_first_s, 2), "first_infer_s": round(infer_first_s, 2),
        "jax": jax.__version__, "host": platform.node(),
    }
    print(json.dumps(result), flush=True)
    return result
