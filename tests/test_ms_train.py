"""The MindSpore training engine: learning, resume, keep, eval coverage, metrics, freezing, AMP, loss scale."""
import importlib
import json
import os
import shutil

import mindspore as ms
import numpy as np
import pytest

from mobilenets_core import loop, specs
from mobilenets_core import weights as canonical
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import build_dataset
from mobilenets_core.data.dataset import Dataset
from mobilenets_ms import train
from mobilenets_ms.weights import to_canonical
from tests.helpers import TINY_V2_V4_LEARNING_RATE, random_canonical_state, tiny_train_config

# 22 steps of 64 per epoch: short runs that still cross an epoch boundary.
BASE = {"train.batch_size": 64, "train.epochs": 2, "checkpoint.every_epochs": 1, "checkpoint.keep": 2,
        "train.log_every_steps": 5}
JAX_KEYS = {"step", "epoch", "split", "loss", "top1", "top5", "lr", "images_per_sec", "step_ms"}


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def network_tensors(workdir):
    ckpt = train.Checkpoints(workdir, read_only=True)
    tensors, _ = ckpt.restore(ckpt.latest_step())
    return tensors


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ms_full"))
    result = train.train_and_evaluate(tiny_train_config(**BASE), workdir)
    return workdir, result


def test_loss_falls_and_every_validation_example_counts_once(uninterrupted):
    workdir, result = uninterrupted
    rows = read_metrics(workdir)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows][:4] == [5, 10, 15, 20]
    assert train_rows[-1]["loss"] < 0.75 * train_rows[0]["loss"]
    assert result["count"] == 359  # eval batch 100 does not divide 359: padded and masked
    assert [r["epoch"] for r in rows if r["split"] == "eval"] == [1, 2]


def test_metrics_have_the_jax_engines_keys(uninterrupted):
    workdir, _ = uninterrupted
    for row in read_metrics(workdir):
        assert JAX_KEYS <= set(row), row
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_keep_is_honoured_and_eval_reproduces_the_final_result(uninterrupted):
    workdir, result = uninterrupted
    ckpt = train.Checkpoints(workdir, read_only=True)
    assert ckpt.all_steps() == [22, 44]  # 2 epochs x 22 steps, keep 2
    assert sorted(os.listdir(ckpt.directory)) == ["ckpt_22.ckpt", "ckpt_22.json", "ckpt_44.ckpt", "ckpt_44.json"]
    again = train.evaluate(tiny_train_config(**BASE), workdir)
    assert again["top1"] == result["top1"] and again["loss"] == pytest.approx(result["loss"], rel=1e-6)


def test_resume_after_a_stop_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    full_dir, full_result = uninterrupted
    workdir = str(tmp_path)
    assert train.train_and_evaluate(tiny_train_config(**BASE), workdir, stop=lambda step: step == 30) is None
    assert train.Checkpoints(workdir, read_only=True).latest_step() == 30
    result = train.train_and_evaluate(tiny_train_config(**BASE), workdir)
    steps = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert steps == [5, 10, 15, 20, 22, 25, 30, 35, 40, 44]  # 30 logged at the stop, then continued
    ours, theirs = network_tensors(workdir), network_tensors(full_dir)
    assert sorted(ours) == sorted(theirs)
    worst = max(float(np.max(np.abs(ours[n].astype(np.float64) - theirs[n]))) for n in ours)
    assert worst < 1e-5, worst
    assert int(ours["step"]) == 44
    assert result["top1"] == pytest.approx(full_result["top1"], abs=2 / 359)


def test_a_checkpoint_of_another_width_is_refused_naming_the_difference(uninterrupted):
    workdir, _ = uninterrupted
    config = tiny_train_config(**{**BASE, "model.width": 0.75})
    with pytest.raises(ConfigError, match=r"holds checkpoints \(newest step 44\) of model.width=0.5; this config has "
                                          r"model.width=0.75: set the same values"):
        train.evaluate(config, workdir)


def test_frozen_backbone_does_not_move(tmp_path):
    config = tiny_train_config(**{"init.freeze": "backbone"})
    arch = specs.architecture_from_config(config.model)
    start = random_canonical_state(arch, seed=4)
    path = str(tmp_path / "start.safetensors")
    canonical.save(path, start, canonical.ModelInfo.from_config(config.model))
    config.init.weights = path
    train.train_and_evaluate(config, str(tmp_path / "run"), stop=lambda step: step == 5)
    ckpt = train.Checkpoints(str(tmp_path / "run"), read_only=True)
    engine = train.MsEngine(config, str(tmp_path / "run"), read_only=True)
    step, _ = loop.load_for_inference(engine, config)
    after = to_canonical(engine.trainer.net)
    assert step == 5
    moved = [n for n in start if not np.array_equal(start[n], after[n])]
    assert sorted(moved) == ["classifier.bias", "classifier.weight", "head.conv.bias", "head.conv.weight"]
    assert ckpt.latest_step() == 5


def test_a_non_finite_step_is_skipped_and_counted_with_a_dynamic_loss_scale():
    """A poisoned batch (NaN images): weights, optimizer state and BatchNorm statistics stay as they
    were, the step is counted, the scale halves; the next good batch trains normally."""
    config = tiny_train_config(**{"mixed_precision.loss_scale": 0.0, "mixed_precision.dynamic_init": 1024.0})
    dataset = build_dataset(config, "train")
    trainer = train.Trainer(config, dataset.steps_per_epoch(32))
    batches = dataset.train_batches(32, epoch=0)
    trainer.train_on(next(batches))
    before = {n: p.asnumpy().copy() for n, p in trainer.state_tensors().items() if n != "step"}
    good = next(batches)
    poisoned = dict(good, image=np.full(good["image"].shape, np.nan, np.float32))
    assert not trainer.train_on(poisoned)["finite"]
    after = {n: p.asnumpy() for n, p in trainer.state_tensors().items() if n != "step"}
    changed = sorted(n for n in before if not np.array_equal(before[n], after[n], equal_nan=True))
    assert changed == ["loss_scale", "loss_scale_good_steps", "overflow_steps"]  # good steps reset to 0
    assert float(after["loss_scale"]) == 512.0 and int(after["overflow_steps"]) == 1
    assert trainer.step == 2  # the data position and the learning-rate index still advance
    assert trainer.train_on(good)["finite"]
    final = to_canonical(trainer.net)
    assert all(np.all(np.isfinite(v)) for v in final.values())
    assert not np.array_equal(final["classifier.weight"], before["classifier.weight"])


@pytest.mark.parametrize("level", ["O3", pytest.param("O2", marks=pytest.mark.slow)])
def test_mixed_precision_levels_train(level):
    """The seeds' AMP levels with their fixed loss scale 1024: float16 compute, float32 weights."""
    config = tiny_train_config(**{"mixed_precision.level": level, "mixed_precision.loss_scale": 1024.0})
    dataset = build_dataset(config, "train")
    trainer = train.Trainer(config, dataset.steps_per_epoch(32))
    losses = [trainer.train_on(batch)["loss"] for _, batch in zip(range(3), dataset.train_batches(32, epoch=0))]
    assert np.all(np.isfinite(losses)) and trainer.overflow_steps == 0
    assert all(p.dtype == ms.float32 for p in trainer.net.trainable_params())


def test_a_batch_the_ranks_cannot_split_is_refused_before_the_network_is_built():
    """msrun with 3 ranks and a global batch of 64: one line naming the key and the fix."""
    config = tiny_train_config(**{"train.batch_size": 64})
    with pytest.raises(ConfigError, match=r"^train\.batch_size=64 is not divisible by the 3 ranks; use a multiple of 3$"):
        train.Trainer(config, steps_per_epoch=1, context={"device": "CPU", "rank": 0, "group_size": 3})
    config = tiny_train_config(**{"train.batch_size": 63, "eval.batch_size": 100})
    with pytest.raises(ConfigError, match=r"^eval\.batch_size=100 is not divisible by the 3 ranks; use a multiple of 3$"):
        train.Trainer(config, steps_per_epoch=1, context={"device": "CPU", "rank": 0, "group_size": 3})


def test_an_unknown_device_is_refused():
    with pytest.raises(ConfigError, match=r"mindspore.device='TPU' is not one of auto, Ascend, GPU, CPU"):
        train.select_device("TPU")


@pytest.mark.slow
def test_msrun_data_parallel_on_two_cpu_ranks(tmp_path):
    """Two ranks started by msrun (mindspore.communication over TCP on CPU): each reads its half of
    every global batch, gradients and eval sums are all-reduced, rank 0 writes the checkpoint."""
    import socket
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir, logs = tmp_path / "run", tmp_path / "logs"
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "msrun"), "--worker_num=2", "--local_worker_num=2",
         f"--master_port={port}", f"--log_dir={logs}", "--join=True", "main.py", "--config=configs/mnv3_small.py",
         f"--workdir={workdir}", "--backend=mindspore", "--config.dataset.name=digits", "--config.train.epochs=1",
         "--config.model.width=0.5", "--config.eval.batch_size=100"],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    rank0 = (logs / "worker_0.log").read_text()
    assert result.returncode == 0, rank0[-3000:] + result.stderr[-2000:]
    assert "steps of 64 on 2 CPU device(s)" in rank0
    rows = read_metrics(str(workdir))
    assert [r["step"] for r in rows if r["split"] == "train"] == [11, 22]  # written once, by rank 0
    evals = [r for r in rows if r["split"] == "eval"]
    assert len(evals) == 1 and np.isfinite(evals[0]["loss"])
    assert train.Checkpoints(str(workdir), read_only=True).all_steps() == [22]
    # eval sums are all-reduced: the 359 examples, 180 + 179 over the two ranks, each counted once
    again = train.evaluate(tiny_train_config(**{"train.batch_size": 64, "model.width": 0.5,
                                                "eval.batch_size": 100}), str(workdir))
    assert again["count"] == 359 and again["top1"] == pytest.approx(evals[0]["top1"], abs=1e-9)


def test_loaded_weights_start_the_ema_too():
    config = tiny_train_config(**{"ema.decay": 0.99})
    trainer = train.Trainer(config, 10)
    state = random_canonical_state(specs.architecture_from_config(config.model), seed=5)
    trainer.load_weights(state)
    ema = {p.name[len("ema."):]: p.asnumpy() for p in trainer.train_step.ema}
    live = {p.name: p.asnumpy() for p in trainer.optimizer.params}
    assert sorted(ema) == sorted(live) and len(ema) > 50
    assert all(np.array_equal(ema[n], live[n]) for n in live)
    np.testing.assert_array_equal(live["classifier.weight"], state["classifier.weight"])


def test_a_non_finite_step_with_a_fixed_loss_scale_stops_naming_the_step(tmp_path, monkeypatch):
    """Without a dynamic scale a NaN step is not applied and ends the run; checkpoint 22 is untouched."""
    from mobilenets_core.failures import NonFiniteLoss

    real = Dataset.train_batches

    def train_batches(self, batch_size, *, epoch, start_step=0):
        for i, b in enumerate(real(self, batch_size, epoch=epoch, start_step=start_step)):
            step = epoch * self.steps_per_epoch(batch_size) + start_step + i + 1
            yield dict(b, image=np.full(b["image"].shape, np.nan, np.float32)) if step == 25 else b

    monkeypatch.setattr(Dataset, "train_batches", train_batches)
    config = tiny_train_config(**{**BASE, "mixed_precision.loss_scale": 1024.0})
    with pytest.raises(NonFiniteLoss, match=r"loss is \S+ at step 25 \(epoch 2\).*the newest checkpoint, step 22, "
                                            r"is intact"):
        train.train_and_evaluate(config, str(tmp_path))
    ckpt = train.Checkpoints(str(tmp_path), read_only=True)
    assert ckpt.all_steps() == [22]
    tensors, _ = ckpt.restore(22)
    assert all(np.all(np.isfinite(v)) for v in tensors.values())


# ----------------------------------------------------------------------------- exact resume, both engines

# Every kind of state a resume must bring back, as configs/mnv3_small.py has it: squeeze-excite and hard-swish,
# dropout, RMSProp's two accumulators, a warm-up then cosine rate, an EMA of the weights, a fixed loss scale.
# On tests/reliability_worker.py's tiny folder: 4 steps of 32 per epoch, 3 epochs, a metrics line every step.
REVEALING = {"model.name": "mobilenet_v3_small", "model.width": 0.5, "model.dropout": 0.2,
             "optimizer.name": "rmsprop", "optimizer.learning_rate": 0.01, "optimizer.eps": 1e-3,
             "optimizer.weight_decay": 4e-5, "schedule.warmup_epochs": 1.0, "ema.decay": 0.9,
             "mixed_precision.loss_scale": 1024.0}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tests.reliability_worker import write_tiny_folder

    return write_tiny_folder(str(tmp_path_factory.mktemp("tiny_folder")))


def _final_state(backend: str, workdir: str, config) -> dict:
    """{name: ndarray} of everything the newest checkpoint holds (parameters, statistics, optimizer, EMA, ...)."""
    if backend == "mindspore":
        return network_tensors(workdir)
    import jax

    from mobilenets_jax import train as jax_train
    from mobilenets_jax.checkpoints import Checkpoints

    checkpoints = Checkpoints(workdir, read_only=True)
    state, _ = checkpoints.restore(checkpoints.latest_step(), jax_train.Trainer(config, 4).abstract_state(0))
    checkpoints.close()
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state))
    return {jax.tree_util.keystr(path): np.asarray(value) for path, value in leaves}


def _drop_checkpoints_after(backend: str, workdir: str, step: int) -> None:
    """What a kill right after checkpoint `step` leaves: no later checkpoint (the later lines of
    metrics.jsonl stay; the resumed run drops them)."""
    if backend == "mindspore":
        directory = os.path.join(workdir, "ms_checkpoints")
        for name in os.listdir(directory):
            if int(name.split("_")[1].split(".")[0]) > step:
                os.remove(os.path.join(directory, name))
    else:
        directory = os.path.join(workdir, "checkpoints")
        for name in os.listdir(directory):
            if name.isdigit() and int(name) > step:
                shutil.rmtree(os.path.join(directory, name))


@pytest.mark.parametrize("backend", ["mindspore", pytest.param("jax", marks=pytest.mark.slow)])
def test_a_run_killed_after_its_first_checkpoint_resumes_bit_identical(backend, tiny_folder, tmp_path):
    """The REVEALING program killed right after its first checkpoint (epoch 1, step 4) and run again: every
    step's loss, Top-1 and rate, the whole final state and the eval equal the uninterrupted run's exactly.
    (MindSpore's own Dropout kept its random state in its kernel, out of reach of a checkpoint: a resumed run
    started the sequence over and ended elsewhere.) A stop mid-epoch: test_resume_after_a_stop_... above and
    tests/test_reliability.py, on programs without these features (the data position does not depend on them)."""
    from tests.reliability_worker import reliability_config

    engine = train if backend == "mindspore" else importlib.import_module("mobilenets_jax.train")
    config = reliability_config(tiny_folder, REVEALING)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    result = engine.train_and_evaluate(config, full)
    shutil.copytree(full, killed)
    _drop_checkpoints_after(backend, killed, 4)
    resumed = engine.train_and_evaluate(config, killed)

    def lines(workdir):
        return [(r["split"], r["step"], r["loss"], r["top1"], r["lr"]) for r in read_metrics(workdir)]

    assert [r[1] for r in lines(full) if r[0] == "train"] == list(range(1, 13))
    assert lines(killed) == lines(full)
    ours, theirs = _final_state(backend, killed, config), _final_state(backend, full, config)
    assert sorted(ours) == sorted(theirs) and len(ours) > 100
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert (resumed["loss"], resumed["top1"]) == (result["loss"], result["top1"])
    # and a second fresh run of the same seed is the same run (MindSpore's Dropout kernel made them differ)
    again = str(tmp_path / "again")
    engine.train_and_evaluate(config, again)
    assert lines(again) == lines(full)


@pytest.mark.parametrize("name,width,variant", [
    ("mobilenet_v2", 0.5, None), ("mobilenet_v4", 0.5, "conv_small"),
    pytest.param("mobilenet_v4", 0.75, "hybrid_medium", marks=pytest.mark.slow)])
def test_mobilenet_v2_and_v4_loss_falls_on_digits(tmp_path, name, width, variant):
    config = tiny_train_config(**{**BASE, "model.name": name, "model.width": width, "model.variant": variant,
                                  "optimizer.learning_rate": TINY_V2_V4_LEARNING_RATE})
    train.train_and_evaluate(config, str(tmp_path / "run"))
    losses = [r["loss"] for r in read_metrics(str(tmp_path / "run")) if r["split"] == "train"]
    assert len(losses) >= 8 and np.isfinite(losses).all()  # 44 steps, a line every 5 and at epoch ends
    assert losses[-1] < 0.85 * losses[0], losses
