"""--mode=bench on the MindSpore engine: training and inference throughput on synthetic data.

Times the engine's real compiled `mobilenets_ms.train.TrainStep` (forward, backward, loss
scaling and overflow check, optimizer update, EMA, metrics) and the network's inference
forward pass, on one random batch created once, so no input pipeline is involved (with bench.data
a dataset, the training step is also timed fed by that dataset's real pipeline). Each figure
is the median over `bench.repeats` runs of `bench.steps` steps, after `bench.warmup_steps`
steps that also absorb graph compilation. Prints one JSON line, the record both engines build
with `mobilenets_core.bench.result_record`.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor

from mobilenets_core.bench import (
    bench_config,
    check_loss,
    fed_data,
    fed_seconds_per_step,
    median_seconds_per_step,
    result_record,
    synthetic_batch,
)
from mobilenets_core.config_check import ConfigError
from mobilenets_ms import layers, onednn_isa
from mobilenets_ms.train import Trainer, device_images, setup


def _wait(outputs):
    """Block until `outputs` (a Tensor or a tuple of them) are computed."""
    first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
    first.asnumpy()


def _dtype(level: str) -> str:
    return "float32" if level == "O0" else f"float16 (AMP {level})"


def bench(config, workdir: str | None = None) -> dict:
    """Measure `config`'s model on this process's MindSpore device; prints and returns the record."""
    del workdir  # nothing is read or written
    config, settings = bench_config(config)
    context = setup(config)
    if context["group_size"] > 1:
        raise ConfigError("--mode=bench measures one device; run it without msrun")
    ms.set_seed(int(config.train.seed))
    trainer = Trainer(config, steps_per_epoch=1, context=context)

    images, labels = (Tensor(a) for a in synthetic_batch(config))
    step = trainer.step_inputs(0, images.shape[0])  # the learning-rate index (and dropout): same work at any step
    trainer.train_step.set_train(True)

    def train_step():
        return trainer.train_step(images, labels, *step)

    warmup, steps, repeats = settings["warmup_steps"], settings["steps"], settings["repeats"]
    train_s, train_first_s = median_seconds_per_step(train_step, _wait, warmup, steps, repeats)
    check_loss(float(train_step()[0].asnumpy()[0]))  # outputs[0]: the stats tensor, loss first
    fed = None
    if fed_data(config):
        fed = fed_seconds_per_step(config, settings, lambda b: (device_images(b["image"]), Tensor(b["label"])),
                                   lambda batch: trainer.train_step(*batch, *step), _wait, train_step)

    net = trainer.inference_net()
    infer_s, infer_first_s = median_seconds_per_step(lambda: net(images), _wait, warmup, steps, repeats)
    level = str((config.get("mixed_precision", None) or {}).get("level", "O0") or "O0")
    return result_record(
        config, settings, backend="mindspore", version=ms.__version__, device=context["device"], device_count=1,
        dtype=_dtype(level), train_s=train_s, train_first_s=train_first_s, infer_s=infer_s,
        infer_first_s=infer_first_s,
        engine_fields={"mode": "graph" if ms.get_context("mode") == ms.GRAPH_MODE else "pynative",
                       "conv_impl": layers.resolve_impl(str(config.model.get("conv_impl", None) or "auto")),
                       "onednn_max_cpu_isa": onednn_isa.current()},
        fed=fed)
