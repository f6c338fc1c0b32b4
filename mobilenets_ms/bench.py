"""--mode=bench on the MindSpore engine: training and inference throughput on synthetic data.

Times the engine's real compiled `mobilenets_ms.train.TrainStep` (forward, backward, loss
scaling and overflow check, optimizer update, EMA, metrics) and the network's inference
forward pass, on one random batch created once, so no input pipeline is involved. Each figure
is the median over `bench.repeats` runs of `bench.steps` steps, after `bench.warmup_steps`
steps that also absorb graph compilation. Prints one JSON line with the keys of the JAX
engine's record (`mobilenets_jax.bench`).
"""
from __future__ import annotations

import json
import platform
import resource
import sys

import mindspore as ms
import numpy as np
from mindspore import Tensor

from mobilenets_core.bench import bench_settings, median_seconds_per_step
from mobilenets_core.config_check import ConfigError
from mobilenets_ms import layers
from mobilenets_ms.train import Trainer, setup

def _wait(outputs):
    """Block until `outputs` (a Tensor or a tuple of them) are computed."""
    first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    first.asnumpy()


def _dtype(level: str) -> str:
    return "float32" if level == "O0" else f"float16 (AMP {level})"


def bench(config, workdir: str | None = None) -> dict:
    """Measure `config`'s model on this process's MindSpore device; prints and returns the record."""
    del workdir  # nothing is read or written
    settings = bench_settings(config)
    batch, size = settings["batch_size"], int(config.dataset.image_size)
    config = config.copy_and_resolve_references()
    config.train.batch_size = config.eval.batch_size = batch
    context = setup(config)
    if context["group_size"] > 1:
        raise ConfigError("--mode=bench measures one device; run it without msrun")
    ms.set_seed(int(config.train.seed))
    trainer = Trainer(config, steps_per_epoch=1, context=context)

    rng = np.random.default_rng(0)
    images = Tensor(rng.standard_normal((batch, size, size, 3), dtype=np.float32))
    labels = Tensor(rng.integers(0, int(config.model.num_classes), batch).astype(np.int32))
    step = Tensor(0, ms.int32)  # the learning-rate index; its value does not change the work
    trainer.train_step.set_train(True)

    def train_step():
        return trainer.train_step(images, labels, step)

    warmup, steps, repeats = settings["warmup_steps"], settings["steps"], settings["repeats"]
    train_s, train_first_s = median_seconds_per_step(train_step, _wait, warmup, steps, repeats)
    loss = float(train_step()[0].asnumpy()[0])
    if not np.isfinite(loss):
        raise FloatingPointError(f"bench: the training loss is {loss} on random data; the step is broken")

    net = trainer.inference_net()
    infer_s, infer_first_s = median_seconds_per_step(lambda: net(images), _wait, warmup, steps, repeats)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    level = str((config.get("mixed_precision", None) or {}).get("level", "O0") or "O0")
    result = {
        "model": config.model.name, "width": float(config.model.width), "groups": config.model.groups,
        "backend": "mindspore", "device": context["device"], "device_count": 1,
        "batch_size": batch, "image_size": size, "dtype": _dtype(level),
        "train_images_per_sec": round(batch / train_s, 2), "infer_images_per_sec": round(batch / infer_s, 2),
        "step_ms": round(1000 * train_s, 2), "infer_ms": round(1000 * infer_s, 2),
        "peak_memory": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale,
        "peak_memory_source": "process peak RSS",
        "mode": "graph" if ms.get_context("mode") == ms.GRAPH_MODE else "pynative",
        "conv_impl": layers.resolve_impl(str(config.model.get("conv_impl", None) or "auto")),
        "warmup_steps": warmup, "steps": steps, "repeats": repeats, "first_train_step_s": round(train_first_s, 2),
        "first_infer_s": round(infer_first_s, 2), "mindspore": ms.__version__, "host": platform.node(),
    }
    print(json.dumps(result), flush=True)
    return result
