"""Deployment files from a JAX checkpoint: TFLite (float32 and int8), TF SavedModel, StableHLO.

Every artefact is the eval-mode network of one checkpoint (EMA weights when `ema.decay > 0`):
float32 NHWC images, normalized as `mobilenets_core.data` does, in; float32 logits out. The
batch dimension is symbolic, so one file serves any batch size, except in the int8 TFLite file
(one image at a time: a symbolic batch spoils its calibration, see write_tflite). All of them
go to `workdir/export/`, described by `export.json` (input shape and dtype, normalization,
class names) so that a phone app needs nothing else from this project.

TensorFlow is imported only inside the functions that write TensorFlow formats: the module (and
`--mode=export --config.export.format=stablehlo`) works without it.
"""
from __future__ import annotations

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from mobilenets_core import atomic_files, export_description, loop
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import build_dataset, preprocess
from mobilenets_core.weights import ModelInfo, workdirs
from mobilenets_jax import models

FORMATS = ("tflite", "saved_model", "stablehlo")
CHOICES = FORMATS + ("all",)
# StableHLO and SavedModel carry code lowered for these platforms; the runtime picks its own.
SERVING_PLATFORMS = ("cpu", "cuda", "tpu")
INT8_BATCH = 1  # the int8 TFLite file takes one image at a time (see write_tflite)
FILES = {"tflite": "model.tflite", "tflite_int8": "model_int8.tflite", "saved_model": "saved_model",
         "stablehlo": "model.stablehlo"}


def requested_formats(config) -> tuple:
    """The formats export.format asks for; a bad value fails before any work."""
    fmt = str(config.export.format)
    if fmt not in CHOICES:
        raise ConfigError(f"export.format={fmt!r} is not a jax export format; use one of: {', '.join(CHOICES)} "
                          f"(mindir, onnx and air need --backend=mindspore)")
    formats = FORMATS if fmt == "all" else (fmt,)
    if "tflite" in formats and int(config.export.calibration_images) < 1:
        raise ConfigError(f"export.calibration_images={config.export.calibration_images} must be at least 1 "
                          f"(training images that calibrate the int8 TFLite model)")
    if int(config.export.agreement_images) < 0:
        raise ConfigError(f"export.agreement_images={config.export.agreement_images} must not be negative "
                          f"(0 skips the int8 agreement check)")
    return formats


def restore_inference_model(config, workdir: str):
    """(module, variables, step, meta) of what --mode=export writes: eval.checkpoint, else the newest
    checkpoint of `workdir`, else config.init.weights (step None; see loop.inference_step).

    The module is the float32 eval network with the BatchNorm epsilon the weights were trained
    with and plain XLA convolutions; `variables` holds the EMA weights when `ema.decay > 0`."""
    from mobilenets_jax.train import JaxEngine

    engine = JaxEngine(config, workdir, read_only=True)
    try:
        step, meta = loop.load_for_inference(engine, config)
    finally:
        engine.close()
    # XLA's own convolutions, whatever trained the weights: the files are for other machines, whose
    # runtimes have depthwise kernels (TFLite DEPTHWISE_CONV_2D, cuDNN), not for this CPU.
    model = engine.trainer.config.model  # with the weights' epsilon
    module = models.build_network(model, dtype=jnp.float32, conv_impl="xla")
    meta = {"model": ModelInfo.from_config(model).as_dict(), **meta}  # init.weights: no meta of their own
    return module, jax.device_get(engine.inference_variables()), step, meta


def calibration_images(config, count: int) -> np.ndarray:
    """`count` preprocessed training images (epoch 0's first ones), float32 NHWC normalized."""
    train = build_dataset(config, "train")
    count = max(1, min(int(count), train.num_examples))
    batch = next(iter(train.train_batches(count, epoch=0)))
    return preprocess.normalize(batch["image"])


# ----------------------------------------------------------------------------- writers


def write_stablehlo(module, variables, image_size: int, path: str) -> dict:
    """Serialized `jax.export` artefact with the weights inside: `Exported.call(images)`."""
    def infer(images):
        return module.apply(variables, images, train=False)

    batch, = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    exported = jax.export.export(jax.jit(infer), platforms=SERVING_PLATFORMS)(spec)
    atomic_files.write_bytes(path, exported.serialize())
    return {"platforms": list(exported.platforms)}


def _tf_module(module, variables, image_size: int, platforms, batch: int | None = None):
    """A tf.Module whose `serve(images)` runs the network; the weights are tf.Variables.

    `batch=None` keeps the batch dimension symbolic (one file for every batch size)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    def infer(weights, images):
        return module.apply(weights, images, train=False)

    converted = jax2tf.convert(infer, polymorphic_shapes=[None, "(batch, _, _, _)" if batch is None else None],
                               with_gradient=False,
                               native_serialization_platforms=tuple(platforms))
    holder = tf.Module()
    holder.weights = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), variables)

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([batch, image_size, image_size, 3], tf.float32, name="images")])
    def serve(images):
        return {"logits": converted(holder.weights, images)}

    holder.serve = serve
    return holder


def write_saved_model(module, variables, image_size: int, path: str, platforms=SERVING_PLATFORMS,
                      batch: int | None = None) -> dict:
    """SavedModel with one signature, serving_default: images -> {"logits": ...}, for TF Serving / TF.js / TFLite."""
    import tensorflow as tf

    holder = _tf_module(module, variables, image_size, platforms, batch)
    with atomic_files.staged(path) as staged:  # saved whole, then swapped in: never a half-written model
        tf.saved_model.save(holder, staged, signatures={"serving_default": holder.serve})
    return {"signature": "serving_default", "input_name": "images", "output_name": "logits",
            "platforms": list(platforms)}


def write_tflite(module, variables, image_size: int, path: str, int8_path: str | None,
                 representative: np.ndarray | None) -> None:
    """Float32 TFLite file and, with `int8_path`, an int8 post-training-quantised one.

    The int8 model keeps float32 input and output (quantize / dequantize at the ends). Its batch
    is fixed to INT8_BATCH: converted with a symbolic batch, the shape arithmetic that comes with
    it (SHAPE / BROADCAST_TO / GATHER ops) wrecks the calibration (Top-1 agreement with the
    float model 0.56 instead of 0.93 on the tests' digits run)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as staging:
        saved = os.path.join(staging, "saved_model")
        write_saved_model(module, variables, image_size, saved, platforms=("cpu",))
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        atomic_files.write_bytes(path, converter.convert())
        if int8_path is not None:
            saved = os.path.join(staging, "saved_model_int8")
            write_saved_model(module, variables, image_size, saved, platforms=("cpu",), batch=INT8_BATCH)
            converter = tf.lite.TFLiteConverter.from_saved_model(saved)
            converter.optimizations = [tf.lite.Optimize.DEFAULT]

            def samples():
                for image in representative:
                    yield [image[None]]

            converter.representative_dataset = samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            atomic_files.write_bytes(int8_path, converter.convert())


def int8_agreement(module, variables, int8_path: str, config) -> dict:
    """Top-1 of the int8 TFLite file against the float network on the first export.agreement_images
    validation images: what quantisation costs, measured where the user sees it (export.json)."""
    import warnings

    import tensorflow as tf

    val = build_dataset(config, "validation")
    count = min(int(config.export.agreement_images), val.num_examples)
    batch = next(iter(val.eval_batches(count)))
    images, labels = preprocess.normalize(batch["image"][:count]), np.asarray(batch["label"])[:count]
    float_logits = np.asarray(jax.jit(lambda x: module.apply(variables, x, train=False))(images))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter announces its move to ai_edge_litert
        interpreter = tf.lite.Interpreter(model_path=int8_path)
    interpreter.allocate_tensors()
    inp, = interpreter.get_input_details()
    out, = interpreter.get_output_details()
    int8_logits = []
    for start in range(0, count, INT8_BATCH):
        interpreter.set_tensor(inp["index"], np.ascontiguousarray(images[start:start + INT8_BATCH]))
        interpreter.invoke()
        int8_logits.append(interpreter.get_tensor(out["index"]).copy())
    int8_top, float_top = np.concatenate(int8_logits).argmax(-1), float_logits.argmax(-1)
    return {"images": count, "split": "validation", "top1_agreement": float(np.mean(int8_top == float_top)),
            "int8_top1": float(np.mean(int8_top == labels)), "float_top1": float(np.mean(float_top == labels))}


# ----------------------------------------------------------------------------- entry point


def export(config, workdir: str) -> dict:
    """Write the deployment files of `workdir`'s checkpoint (without one: of config.init.weights) to
    workdir/export/; returns {format: path}.

    Formats: "tflite" (model.tflite float32 and model_int8.tflite), "saved_model" (directory,
    signature serving_default: images -> logits), "stablehlo" (model.stablehlo), plus
    "metadata" -> export.json."""
    formats = requested_formats(config)
    workdir = os.path.abspath(workdir)
    module, variables, step, meta = restore_inference_model(config, workdir)
    size = int(config.dataset.image_size)  # the checkpoint's, or eval.image_size (loop.load_for_inference)
    out_dir = export_description.output_dir(workdir)
    paths, artefacts = {}, []
    num_classes = int(config.model.num_classes)

    def record(key, fmt, extra, batch=None):
        paths[key] = os.path.join(out_dir, FILES[key])
        artefacts.append(export_description.artefact(fmt, FILES[key], batch, size, num_classes, **extra))

    if "tflite" in formats:
        representative = calibration_images(config, int(config.export.calibration_images))
        write_tflite(module, variables, size, os.path.join(out_dir, FILES["tflite"]),
                     os.path.join(out_dir, FILES["tflite_int8"]), representative)
        record("tflite", "tflite", {"quantization": "float32"})
        int8 = {"quantization": "int8 post-training (float32 input and output)",
                "calibration_images": int(len(representative))}
        if int(config.export.agreement_images) > 0:
            check = int8_agreement(module, variables, os.path.join(out_dir, FILES["tflite_int8"]), config)
            int8["agreement"] = check
            print(f"int8 TFLite: Top-1 agreement with the float model {check['top1_agreement']:.4f} on "
                  f"{check['images']} validation images (Top-1 int8 {check['int8_top1']:.4f}, "
                  f"float {check['float_top1']:.4f})")
        record("tflite_int8", "tflite", int8, batch=INT8_BATCH)
    if "saved_model" in formats:
        extra = write_saved_model(module, variables, size, os.path.join(out_dir, FILES["saved_model"]))
        record("saved_model", "saved_model", extra)
    if "stablehlo" in formats:
        extra = write_stablehlo(module, variables, size, os.path.join(out_dir, FILES["stablehlo"]))
        record("stablehlo", "stablehlo", {**extra, "load": "jax.export.deserialize(bytes).call(images)"})

    source = export_description.weights_source(config, step, os.path.join(workdir, workdirs.JAX_DIRECTORY, f"{step}"))
    return export_description.write(out_dir, paths, export_description.describe(
        "jax", workdir, meta, config.model, source, size, num_classes, artefacts))
