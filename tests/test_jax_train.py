"""The JAX training engine: learning, sharding, multi-process, resume, keep, eval coverage, data sources."""
import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilenets_core import metrics as metrics_lib
from mobilenets_core.data import build_dataset, normalize
from mobilenets_jax import train
from mobilenets_jax.checkpoints import Checkpoints
from tests.helpers import TINY_V2_V4_LEARNING_RATE, tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "jax_worker.py")


def worker(*args, env=None, timeout=600):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.Popen([sys.executable, WORKER, *args], cwd=ROOT, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def params_of(workdir, config):
    """Parameters of the newest checkpoint of `workdir`."""
    dataset = build_dataset(config, "train")
    trainer = train.Trainer(config, dataset.steps_per_epoch(config.train.batch_size))
    ckpt = Checkpoints(workdir, read_only=True)
    state, _ = ckpt.restore(ckpt.latest_step(), trainer.init_state(0))
    ckpt.close()
    return state, trainer


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


def two_epoch_losses(config) -> list:
    """The loss of every step of two epochs of `config` trained from scratch."""
    dataset = build_dataset(config, "train")
    trainer = train.Trainer(config, dataset.steps_per_epoch(config.train.batch_size))
    state = trainer.init_state(0)
    losses = []
    for epoch in range(2):
        for batch in dataset.train_batches(config.train.batch_size, epoch=epoch):
            state, m = trainer.train_step(state, trainer.to_global(batch))
            losses.append(float(m["loss"]))
    return losses


def test_loss_falls_on_digits():
    config = tiny_train_config()
    losses = two_epoch_losses(config)
    assert len(losses) == 2 * (1438 // 32)
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


@pytest.mark.slow
def test_sharded_step_on_4_devices_equals_1_device(tmp_path):
    runs = {n: worker("steps", str(tmp_path / f"{n}.npz"), env={"XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"})
            for n in (1, 4)}
    for proc in runs.values():
        finish(proc)
    one, four = (np.load(tmp_path / f"{n}.npz") for n in (1, 4))
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4
    assert four["losses"].shape == (1,)
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-6)
    for key in one.files:
        if key not in ("losses", "devices"):
            np.testing.assert_allclose(four[key], one[key], rtol=0, atol=1e-5, err_msg=key)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_through_jax_distributed_match_one_process(tmp_path):
    port = free_port()
    two = [worker("train", str(tmp_path / "two"), env={
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}) for i in range(2)]
    one = worker("train", str(tmp_path / "one"), env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    outputs = [finish(p) for p in two + [one]]
    assert "processes=2 devices=2" in outputs[0] and "processes=1 devices=2" in outputs[2]
    config = tiny_train_config(**{"train.epochs": 1, "train.batch_size": 128})
    two_state, _ = params_of(str(tmp_path / "two"), config)
    one_state, _ = params_of(str(tmp_path / "one"), config)
    for key, value in flat(one_state.params).items():
        np.testing.assert_allclose(flat(two_state.params)[key], value, rtol=0, atol=1e-5, err_msg=key)
    top1 = [line.split()[0] for out in outputs for line in out.splitlines() if line.startswith("top1=")]
    assert len(top1) == 3
    assert top1[0] == top1[-1]  # the same validation Top-1 to the last digit


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    config = tiny_train_config(**{"checkpoint.keep": 1, "train.batch_size": 64})
    result = train.train_and_evaluate(config, workdir)
    return workdir, config, result


@pytest.mark.slow  # 1.5-2 minutes on 2 cores
def test_resume_mid_epoch_gives_identical_parameters(tmp_path, uninterrupted):
    full_dir, config, _ = uninterrupted
    workdir = str(tmp_path)
    assert train.train_and_evaluate(config, workdir, stop=lambda step: step == 13) is None
    assert Checkpoints(workdir, read_only=True).latest_step() == 13  # mid-epoch: 22 steps per epoch
    train.train_and_evaluate(config, workdir)
    train_lines = [r for r in metrics_lib.read_metrics(workdir) if r["split"] == "train"]
    # 13: the stop flushes the steps since the last line; the rerun goes on after it
    assert [r["step"] for r in train_lines if 10 <= r["step"] <= 25] == [10, 13, 15, 20, 22, 25]
    resumed, _ = params_of(workdir, config)
    full, _ = params_of(full_dir, config)
    assert int(resumed.step) == int(full.step) == 44
    for key, value in flat(full.params).items():
        np.testing.assert_array_equal(flat(resumed.params)[key], value, err_msg=key)
    for key, value in flat(full.batch_stats).items():
        np.testing.assert_array_equal(flat(resumed.batch_stats)[key], value, err_msg=key)


def test_keep_is_honoured(tmp_path):
    config = tiny_train_config(**{"train.epochs": 3, "train.batch_size": 128, "checkpoint.keep": 2})
    train.train_and_evaluate(config, str(tmp_path))
    assert Checkpoints(str(tmp_path), read_only=True).all_steps() == [22, 33]  # 11 steps per epoch


def test_eval_counts_every_example_once_with_a_non_dividing_batch(uninterrupted):
    workdir, config, result = uninterrupted
    assert result["count"] == 359 and 359 % config.eval.batch_size != 0
    state, trainer = params_of(workdir, config)
    images, labels = [], []
    for batch in build_dataset(config, "validation").eval_batches(359):
        images.append(normalize(batch["image"]))
        labels.append(batch["label"])
    logits = trainer.module.apply({"params": state.params, "batch_stats": state.batch_stats},
                                  jnp.asarray(np.concatenate(images)), train=False)
    expected_top1 = float((np.argmax(np.asarray(logits), -1) == np.concatenate(labels)).mean())
    assert result["top1"] == pytest.approx(expected_top1, abs=1e-9)
    records = metrics_lib.read_metrics(workdir)
    assert set(metrics_lib.REQUIRED_KEYS) <= set(records[-1])
    assert records[-1]["split"] == "eval" and records[-1]["top1"] == result["top1"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))


@pytest.mark.slow
def test_tfds_source_trains_under_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    config = tiny_train_config(**{"train.epochs": 3, "train.batch_size": 16, "eval.batch_size": 24,
                                  "eval.every_epochs": 3})
    config.dataset.name = "cifar10"
    with tfds.testing.mock_data(num_examples=48):
        result = train.train_and_evaluate(config, str(tmp_path))
    assert result["count"] == 48
    assert [r["step"] for r in metrics_lib.read_metrics(str(tmp_path)) if r["split"] == "train"] == [3, 5, 6, 9]
    assert Checkpoints(str(tmp_path), read_only=True).all_steps() == [3, 6, 9]


@pytest.mark.slow
def test_folder_source_trains_on_real_jpegs(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, indices in (("train", range(0, 120)), ("validation", range(120, 150))):
        for i in indices:
            folder = tmp_path / "data" / split / f"digit_{digits.target[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels).convert("RGB").resize((40, 40)).save(folder / f"{i}.jpg", quality=90)
    config = tiny_train_config(**{"train.epochs": 1, "train.batch_size": 16, "eval.batch_size": 16})
    config.dataset.name, config.dataset.path = "folder", str(tmp_path / "data")
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["count"] == 30
    saved = json.load(open(tmp_path / "run" / "dataset.json"))
    assert saved["class_names"] == [f"digit_{d}" for d in range(10)]
    assert saved["num_train"] == 120


def test_bfloat16_computes_in_bf16_with_float32_master_weights():
    config = tiny_train_config(**{"train.dtype": "bfloat16"})
    dataset = build_dataset(config, "train")
    trainer = train.Trainer(config, dataset.steps_per_epoch(config.train.batch_size))
    state = trainer.init_state(0)
    batch = trainer.to_global(next(dataset.train_batches(config.train.batch_size, epoch=0)))
    jaxpr = str(jax.make_jaxpr(trainer._train_step)(state, batch))
    assert "bf16[32,16,16,16]" in jaxpr  # the stem's activations are bfloat16
    state, m = trainer.train_step(state, batch)
    assert np.isfinite(float(m["loss"]))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)} == {jnp.dtype("float32")}


def test_weight_decay_skips_batchnorm_and_bias_when_asked():
    from mobilenets_jax.optimizers import build_optimizer

    config = tiny_train_config(**{"optimizer.weight_decay": 0.5, "optimizer.decay_bn_and_bias": False,
                                  "optimizer.momentum": 0.0})
    params = {"conv": {"kernel": jnp.ones((3,))}, "bn": {"scale": jnp.ones((3,)), "bias": jnp.ones((3,))}}
    tx = build_optimizer(config, np.full(10, 0.1, np.float32))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    assert float(updates["conv"]["kernel"][0]) == pytest.approx(-0.1 * 0.5)
    assert float(updates["bn"]["scale"][0]) == 0.0 and float(updates["bn"]["bias"][0]) == 0.0


@pytest.mark.slow  # 1.5-2 minutes on 2 cores
def test_sigterm_saves_the_current_step_exits_zero_and_the_rerun_continues(tmp_path):
    import signal
    import time

    code = ("import sys; sys.path.insert(0, '.'); from tests.helpers import tiny_train_config; "
            "from mobilenets_jax import train; "
            "train.train_and_evaluate(tiny_train_config(**{'train.epochs': 3, 'train.log_every_steps': 1}), sys.argv[1])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    metrics_file = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    step = Checkpoints(str(tmp_path), read_only=True).latest_step()
    assert 5 <= step < 3 * 44
    assert f"stopped at step {step}; checkpoint saved, run again to resume" in out
    result = train.train_and_evaluate(tiny_train_config(**{"train.epochs": 3, "train.log_every_steps": 1}), str(tmp_path))
    steps = [r["step"] for r in metrics_lib.read_metrics(str(tmp_path)) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 3 * 44  # no step twice, none missing at the end
    assert result["count"] == 359


@pytest.mark.parametrize("name,width,variant", [
    ("mobilenet_v2", 0.5, None), ("mobilenet_v4", 0.5, "conv_small"),
    pytest.param("mobilenet_v4", 0.75, "hybrid_medium", marks=pytest.mark.slow)])
def test_mobilenet_v2_and_v4_loss_falls_on_digits(name, width, variant):
    config = tiny_train_config(**{"model.name": name, "model.width": width, "model.variant": variant,
                                  "optimizer.learning_rate": TINY_V2_V4_LEARNING_RATE})
    losses = two_epoch_losses(config)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10])  # 90 steps from scratch at 32 px: falling
