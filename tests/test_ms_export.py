"""Deployment export from a MindSpore checkpoint: MINDIR back in MindSpore, ONNX in onnxruntime.

One tiny run (MobileNetV3-Small 0.5, digits, 1 epoch) is exported once in all formats; each file
then runs in its own runtime and its logits are compared with those of the checkpoint's network,
rebuilt here from the .ckpt file independently of export.py."""
import contextlib
import io
import json
import os
import re
import shutil

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mobilenets_core import weights as canonical
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import NORMALIZE_MEAN, NORMALIZE_STD, build_dataset, normalize
from mobilenets_ms import export as export_lib
from mobilenets_ms import models, train
from mobilenets_ms.checkpoints import Checkpoints
from mobilenets_ms.weights import load_canonical
from tests.helpers import random_canonical_state, tiny_train_config

ort = pytest.importorskip("onnxruntime")

FLOAT_TOLERANCE = 1e-4
STEPS = 1438 // 32  # one epoch of the digits training split at batch 32


def export_config(**fields):
    config = tiny_train_config(**{"train.epochs": 1})
    for key, value in fields.items():
        config.export[key] = value
    return config


def device() -> str:
    return train.setup(export_config())["device"]


def checkpoint_network(config, path):
    """The eval-mode network with the parameters of the .ckpt at `path` (optimizer state ignored)."""
    net = models.build_network(config.model, seed=123)  # another seed: every weight must come from the file
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(path))
    assert not not_loaded
    net.set_train(False)
    return net


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config, workdir, exported paths, export's stdout, validation images and labels, checkpoint logits)."""
    workdir = str(tmp_path_factory.mktemp("ms_export_run"))
    config = export_config()
    result = train.train_and_evaluate(config, workdir)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        paths = export_lib.export(config, workdir)

    val = build_dataset(config, "validation")
    batch = next(iter(val.eval_batches(val.num_examples)))
    images, labels = normalize(batch["image"]), batch["label"]
    net = checkpoint_network(config, Checkpoints(workdir).path(STEPS))
    logits = net(Tensor(images)).asnumpy()
    return dict(config=config, workdir=workdir, paths=paths, printed=printed.getvalue(), images=images,
                labels=labels, logits=logits, result=result)


def test_reference_is_the_checkpoint(run):
    top1 = float(np.mean(run["logits"].argmax(-1) == run["labels"]))
    assert top1 == pytest.approx(run["result"]["top1"], abs=1e-9)  # what training's evaluation reported


def test_every_format_is_written_and_described(run):
    paths, workdir = run["paths"], run["workdir"]
    export_dir = os.path.join(workdir, "export")
    if device() == "Ascend":
        pytest.skip("the expectations below are those of a device without AIR")
    assert set(paths) == {"mindir", "onnx", "metadata"}
    assert sorted(os.listdir(export_dir)) == ["export.json", "model.mindir", "model.onnx"]
    # as readable as any file written here (MindSpore itself leaves MINDIR readable by its owner only)
    assert os.stat(paths["mindir"]).st_mode == os.stat(paths["onnx"]).st_mode == os.stat(paths["metadata"]).st_mode
    assert run["printed"].splitlines() == [
        f"air: skipped, MindSpore writes AIR only on Ascend (this run is on {device()})",
        f"exported mindir: {export_dir}/model.mindir",
        f"exported onnx: {export_dir}/model.onnx",
        f"exported metadata: {export_dir}/export.json"]
    with open(paths["metadata"]) as f:
        meta = json.load(f)
    assert meta["engine"] == "mindspore"
    assert meta["model"] == {"name": "mobilenet_v3_small", "width": 0.5, "groups": None, "num_classes": 10,
                             "bn_eps": 1e-5, "convention": "timm", "variant": None}
    assert meta["checkpoint"] == {"path": f"{workdir}/ms_checkpoints/ckpt_{STEPS}.ckpt", "step": STEPS,
                                  "weights": "params"}
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta["input"]["shape"] == [None, 32, 32, 3] and meta["input"]["dtype"] == "float32"
    assert meta["input"]["layout"] == "NHWC"
    np.testing.assert_allclose(meta["input"]["normalization"]["mean"], NORMALIZE_MEAN)
    np.testing.assert_allclose(meta["input"]["normalization"]["std"], NORMALIZE_STD)
    assert meta["output"] == {"shape": [None, 10], "dtype": "float32", "kind": "logits"}
    shapes = {a["path"]: (a["format"], a["input_shape"], a["output_shape"]) for a in meta["artefacts"]}
    assert shapes == {"model.mindir": ("mindir", [None, 32, 32, 3], [None, 10]),
                      "model.onnx": ("onnx", [1, 32, 32, 3], [1, 10])}


@pytest.mark.parametrize("batch", [1, 5])
def test_mindir_matches_checkpoint(run, batch):
    graph = nn.GraphCell(ms.load(run["paths"]["mindir"]))
    got = graph(Tensor(run["images"][:batch])).asnumpy()
    assert got.shape == (batch, 10)
    assert np.abs(got - run["logits"][:batch]).max() < FLOAT_TOLERANCE


def test_onnx_matches_checkpoint(run):
    session = ort.InferenceSession(run["paths"]["onnx"], providers=["CPUExecutionProvider"])
    inp, = session.get_inputs()
    out, = session.get_outputs()
    assert (inp.name, inp.shape, inp.type) == ("images", [1, 32, 32, 3], "tensor(float)")
    assert (out.name, out.shape) == ("logits", [1, 10])
    got = np.concatenate([session.run(None, {"images": run["images"][i:i + 1]})[0] for i in range(8)])
    assert got.shape == (8, 10)
    assert np.abs(got - run["logits"][:8]).max() < FLOAT_TOLERANCE


def test_one_format_writes_only_that(run, tmp_path):
    workdir = str(tmp_path / "copy")
    shutil.copytree(os.path.join(run["workdir"], "ms_checkpoints"), os.path.join(workdir, "ms_checkpoints"))
    paths = export_lib.export(export_config(format="onnx"), workdir)
    assert set(paths) == {"onnx", "metadata"}
    assert sorted(os.listdir(os.path.join(workdir, "export"))) == ["export.json", "model.onnx"]
    with open(paths["metadata"]) as f:
        assert json.load(f)["class_names"] == [str(d) for d in range(10)]  # from the checkpoint's metadata


def test_unknown_format_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        export_lib.export(export_config(format="tflite"), str(tmp_path))
    assert str(error.value) == ("export.format='tflite' is not a mindspore export format; use one of: mindir, onnx, "
                                "air, all (tflite, saved_model and stablehlo need --backend=jax)")


def test_air_alone_needs_ascend(tmp_path):
    if device() == "Ascend":
        pytest.skip("Ascend writes AIR")
    with pytest.raises(ConfigError) as error:
        export_lib.export(export_config(format="air"), str(tmp_path))
    assert str(error.value) == (f"export.format='air' needs an Ascend device (MindSpore runs on {device()} here); "
                                "use export.format=mindir or onnx")


def test_no_checkpoint_names_the_directory(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"no checkpoint in {tmp_path}/ms_checkpoints; train first")):
        export_lib.export(export_config(), str(tmp_path))
    assert not os.path.exists(tmp_path / "export")


def test_missing_eval_checkpoint_lists_the_available_steps(run):
    config = export_config()
    config.eval.checkpoint = 7
    with pytest.raises(ConfigError, match=re.escape(f"eval.checkpoint=7 is not a checkpoint in {run['workdir']}/"
                                                    f"ms_checkpoints; available steps: [{STEPS}]")):
        export_lib.export(config, run["workdir"])


def test_ema_weights_are_exported(tmp_path):
    """With ema.decay > 0 the MINDIR file computes with the EMA weights, not the live ones."""
    config = export_config(format="mindir")
    config.ema.decay = 0.99
    trainer = train.Trainer(config, 1)
    live_state = random_canonical_state(trainer.net.arch, seed=0)
    ema_state = random_canonical_state(trainer.net.arch, seed=1)
    for name in ema_state:  # BatchNorm statistics are not averaged: both share the live ones
        if name.endswith((".mean", ".var")):
            ema_state[name] = live_state[name]
    load_canonical(trainer.net, live_state)
    want_net = models.build_network(config.model)
    load_canonical(want_net, ema_state)
    want_params = want_net.parameters_dict()
    for ema, param in zip(trainer.train_step.ema, trainer.optimizer.params):
        ema.set_data(Tensor(want_params[param.name].asnumpy()))
    Checkpoints(str(tmp_path)).save(3, trainer.state_tensors(), {"model": {"bn_eps": 1e-5}, "image_size": 32})
    paths = export_lib.export(config, str(tmp_path))

    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    want_net.set_train(False)
    want = want_net(Tensor(images)).asnumpy()
    live_net = models.build_network(config.model)
    load_canonical(live_net, live_state)
    live_net.set_train(False)
    assert np.abs(live_net(Tensor(images)).asnumpy() - want).max() > 0.1  # the two weight sets differ visibly
    got = nn.GraphCell(ms.load(paths["mindir"]))(Tensor(images)).asnumpy()
    assert np.abs(got - want).max() < FLOAT_TOLERANCE
    with open(paths["metadata"]) as f:
        assert json.load(f)["checkpoint"]["weights"] == "ema"


def test_init_weights_are_exported_without_a_checkpoint(tmp_path):
    """A workdir without checkpoints exports config.init.weights as they are (imported weights have no
    EMA), with the BatchNorm epsilon the file records."""
    config = export_config(format="mindir")
    config.ema.decay = 0.99
    state = random_canonical_state(models.build_network(config.model).arch, seed=2)
    weights = str(tmp_path / "weights.safetensors")
    canonical.save(weights, state, canonical.ModelInfo("mobilenet_v3_small", 0.5, None, 10, 1e-3))
    config.init.weights = weights
    paths = export_lib.export(config, str(tmp_path / "run"))

    want_net = models.build_network(config.model, bn_eps=1e-3)
    load_canonical(want_net, state)
    want_net.set_train(False)
    images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    got = nn.GraphCell(ms.load(paths["mindir"]))(Tensor(images)).asnumpy()
    assert np.abs(got - want_net(Tensor(images)).asnumpy()).max() < FLOAT_TOLERANCE
    with open(paths["metadata"]) as f:
        meta = json.load(f)
    assert meta["checkpoint"] == {"path": weights, "step": None, "weights": "init.weights"}
    assert meta["model"]["bn_eps"] == 1e-3


# One V2 and one V4 network through MINDIR and ONNX: their blocks (inverted residuals with ReLU6; universal
# inverted bottlenecks) are not MobileNetV3's. Random weights, with BatchNorm gains raised (x bn_gain) until
# the logits differ between images (std over images ~0.2; at gain 1 it is 1e-5 for V2 and 2e-4 for V4, and
# a wrong layer could pass unseen).
NEW_FAMILIES = [("mobilenet_v2", 0.5, None, 2.0), ("mobilenet_v4", 0.5, "conv_small", 1.5)]


@pytest.mark.parametrize("name,width,variant,bn_gain", NEW_FAMILIES)
def test_mobilenet_v2_and_v4_export_to_mindir_and_onnx(tmp_path, name, width, variant, bn_gain):
    config = export_config()
    config.model.name, config.model.width, config.model.variant = name, width, variant
    info = canonical.ModelInfo.from_config(config.model)
    state = random_canonical_state(info.architecture(), seed=3)
    state = {key: value * bn_gain if key.endswith(".scale") else value for key, value in state.items()}
    weights = str(tmp_path / "weights.safetensors")
    canonical.save(weights, state, info)
    config.init.weights = weights
    paths = export_lib.export(config, str(tmp_path / "run"))
    assert set(paths) >= {"mindir", "onnx", "metadata"}

    want_net = models.build_network(config.model)
    load_canonical(want_net, state)
    want_net.set_train(False)
    val = build_dataset(config, "validation")
    images = normalize(next(iter(val.eval_batches(8)))["image"])
    want = want_net(Tensor(images)).asnumpy()
    assert want.std(axis=0).mean() > 0.1  # logits that differ between images: a comparison that can fail
    got = nn.GraphCell(ms.load(paths["mindir"]))(Tensor(images)).asnumpy()
    assert np.abs(got - want).max() < FLOAT_TOLERANCE
    session = ort.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"images": images[i:i + 1]})[0] for i in range(len(images))])
    assert np.abs(got - want).max() < FLOAT_TOLERANCE
    with open(paths["metadata"]) as f:
        assert json.load(f)["model"] == info.as_dict()
