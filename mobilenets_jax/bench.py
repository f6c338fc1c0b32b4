"""--mode=bench on the JAX engine: training and inference throughput on synthetic data.

Times the engine's real jitted training step (`mobilenets_jax.train.Trainer.train_step`:
forward, backward, optimizer update, EMA, metrics, donated state) and a jitted inference
forward pass, on one random batch that stays on the device, so no input pipeline (and no
TensorFlow) is involved. Each figure is the median over `bench.repeats` runs of `bench.steps`
steps, after `bench.warmup_steps` steps that also absorb compilation. With bench.data a dataset,
the training step is also timed fed by that dataset's real pipeline. Prints one JSON line.
"""
from __future__ import annotations

import jax

from mobilenets_core import huge_pages
from mobilenets_core.bench import (
    bench_config,
    check_loss,
    fed_data,
    fed_seconds_per_step,
    median_seconds_per_step,
    result_record,
    synthetic_batch,
)
from mobilenets_jax import layers
from mobilenets_jax.train import Trainer


def bench(config, workdir: str | None = None) -> dict:
    """Measure `config`'s model on this host's devices; prints and returns the result record."""
    del workdir  # nothing is read or written
    config, settings = bench_config(config)
    trainer = Trainer(config, steps_per_epoch=1)
    state = trainer.init_state(int(config.train.seed))

    images, labels = synthetic_batch(config)
    train_batch = trainer.to_global({"image": images, "label": labels})

    def train_step():
        nonlocal state
        state, metrics = trainer.train_step(state, train_batch)
        return metrics["loss"]

    warmup, steps, repeats = settings["warmup_steps"], settings["steps"], settings["repeats"]
    train_s, train_first_s = median_seconds_per_step(train_step, jax.block_until_ready, warmup, steps, repeats)
    check_loss(float(train_step()))
    fed = None
    if fed_data(config):
        def fed_step(batch):
            nonlocal state
            state, metrics = trainer.train_step(state, batch)
            return metrics["loss"]

        fed = fed_seconds_per_step(config, settings, trainer.to_global, fed_step, jax.block_until_ready, train_step)

    module = trainer.module
    infer = jax.jit(lambda params, stats, x: module.apply({"params": params, "batch_stats": stats}, x, train=False),
                    in_shardings=(trainer.replicated, trainer.replicated, trainer.batch_sharding))
    infer_images = train_batch["image"]
    infer_s, infer_first_s = median_seconds_per_step(lambda: infer(state.params, state.batch_stats, infer_images),
                                                     jax.block_until_ready, warmup, steps, repeats)
    device = jax.devices()[0]
    return result_record(
        config, settings, backend="jax", version=jax.__version__, device=f"{device.platform}:{device.device_kind}",
        device_count=jax.device_count(), dtype=str(config.train.dtype), train_s=train_s, train_first_s=train_first_s,
        infer_s=infer_s, infer_first_s=infer_first_s,
        device_peak_bytes=(device.memory_stats() or {}).get("peak_bytes_in_use"),  # none on CPU: process peak RSS
        engine_fields={"conv_impl": layers.resolve_impl(module.conv_impl), "malloc_huge_pages": huge_pages.active()},
        fed=fed)
