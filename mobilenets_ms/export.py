"""Deployment files from a MindSpore checkpoint: MINDIR and ONNX, plus AIR on Ascend.

Every file is the eval-mode float32 network of one checkpoint (EMA weights when `ema.decay > 0`):
float32 NHWC images, normalized as `mobilenets_core.data` does, in; float32 logits out. The
MINDIR file keeps the batch dimension symbolic. ONNX and AIR take exactly ONNX_BATCH images:
MindSpore's ONNX exporter writes the traced batch into the Reshape ops (ShuffleNet's channel
shuffle, for one), so a file marked dynamic would still fail on any other batch. Everything goes
to `workdir/export/`, described by `export.json` (input shape and dtype, normalization, class
names), the same description the JAX engine writes.
"""
from __future__ import annotations

import os

import mindspore as ms
import numpy as np
from mindspore import Tensor

from mobilenets_core import atomic_files, export_description, loop
from mobilenets_core.config_check import ConfigError
from mobilenets_ms import models, train

FORMATS = ("mindir", "onnx", "air")
CHOICES = FORMATS + ("all",)
FILES = {"mindir": "model.mindir", "onnx": "model.onnx", "air": "model.air"}
ONNX_BATCH = 1  # the fixed batch of the ONNX and AIR files (see the module docstring)
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def requested_formats(config) -> tuple:
    """The formats export.format asks for; a bad value fails before any work."""
    fmt = str(config.export.format)
    if fmt not in CHOICES:
        raise ConfigError(f"export.format={fmt!r} is not a mindspore export format; use one of: "
                          f"{', '.join(CHOICES)} (tflite, saved_model and stablehlo need --backend=jax)")
    return FORMATS if fmt == "all" else (fmt,)


def _write(net, example: Tensor, path: str, fmt: str) -> None:
    """Export under a temporary name beside `path`, then rename: never a truncated file under the final name."""
    with atomic_files.staged(path) as staged:  # keeps the extension, so MindSpore appends none
        if fmt == "onnx":
            with models.portable_activations(net):
                ms.onnx.export(net, example, file_name=staged, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        else:
            ms.export(net, example, file_name=staged, file_format=fmt.upper())
        os.chmod(staged, 0o666 & ~_umask())  # MindSpore leaves MINDIR owner-read-only; deploy files are shared


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export(config, workdir: str) -> dict:
    """Write the deployment files of `workdir`'s MindSpore checkpoint (without one: of config.init.weights)
    to workdir/export/; returns {format: path}.

    "mindir" (model.mindir, any batch: `nn.GraphCell(mindspore.load(path))(images)`), "onnx"
    (model.onnx, input "images", output "logits", batch ONNX_BATCH), "air" (model.air, Ascend only),
    plus "metadata" -> export.json."""
    formats = requested_formats(config)
    device = train.setup(config)["device"]
    if formats == ("air",) and device != "Ascend":
        raise ConfigError(f"export.format='air' needs an Ascend device (MindSpore runs on {device} here); "
                          f"use export.format=mindir or onnx")
    workdir = os.path.abspath(workdir)
    engine = train.MsEngine(config, workdir, read_only=True)
    step, meta = loop.load_for_inference(engine, config)
    trainer = engine.trainer
    net = trainer.inference_net()  # init.weights: their EMA starts at them
    source = export_description.weights_source(config, step, engine.checkpoint_name(step) if step is not None else "")
    size = int(config.dataset.image_size)  # the checkpoint's, or eval.image_size (loop.load_for_inference)
    num_classes = int(trainer.num_classes)
    out_dir = export_description.output_dir(workdir)
    if "air" in formats and device != "Ascend":
        formats = tuple(f for f in formats if f != "air")
        print(f"air: skipped, MindSpore writes AIR only on Ascend (this run is on {device})")

    paths, artefacts = {}, []
    fixed = Tensor(np.zeros((ONNX_BATCH, size, size, 3), np.float32))
    for fmt in formats:
        path = os.path.join(out_dir, FILES[fmt])
        batch = None if fmt == "mindir" else ONNX_BATCH
        example = Tensor(shape=[None, size, size, 3], dtype=ms.float32) if batch is None else fixed
        _write(net, example, path, fmt)
        paths[fmt] = path
        artefact = export_description.artefact(fmt, FILES[fmt], batch, size, num_classes)
        if fmt == "mindir":
            artefact["load"] = "mindspore.nn.GraphCell(mindspore.load(path))(images)"
        elif fmt == "onnx":
            artefact.update(input_name=INPUT_NAME, output_name=OUTPUT_NAME,
                            load="onnxruntime.InferenceSession(path).run(None, {'images': images})[0]")
        artefacts.append(artefact)

    return export_description.write(out_dir, paths, export_description.describe(  # trainer.config: the weights' bn_eps
        "mindspore", workdir, meta, trainer.config.model, source, size, num_classes, artefacts))
