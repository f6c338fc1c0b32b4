"""Reliability: kills, preemption, non-finite losses, bad configs, bad data, bad weights, failed saves.

Every test breaks something on purpose and asserts what the user can rely on afterwards: the
newest complete checkpoint loads, a resumed run ends with exactly the parameters of an
uninterrupted one, errors are one line naming the value and the fix, and nothing in a workdir
is overwritten. The training runs share one tiny program (reliability_worker.reliability_config:
MobileNetV1 0.25, 32 px, 4 classes, 4 steps per epoch, 3 epochs) and the test run's compilation
cache (tests/conftest.py), so after the first compile each run costs seconds.

The engine-specific parts (how to read a checkpoint's step list and parameters, where a save in
flight lives) sit in the BACKENDS table; the tests parameterised over it run on both engines, and
the MindSpore-only tests (`test_ms_*`) cover what its .ckpt files do differently.
"""
import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from PIL import Image

from mobilenets_core import metrics as metrics_lib
from mobilenets_core import specs, weights
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import build_dataset, preprocess
from mobilenets_core.data.dataset import Dataset
from mobilenets_core.failures import CheckpointError, NonFiniteLoss
from mobilenets_core.weights import ModelInfo, mindspore_ckpt, reader
from mobilenets_jax import train
from mobilenets_jax.checkpoints import Checkpoints
from mobilenets_ms import checkpoints as ms_checkpoints
from mobilenets_ms import train as ms_train
from tests.helpers import random_canonical_state
from tests.reliability_worker import reliability_config, write_tiny_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "reliability_worker.py")
STEPS_PER_EPOCH, LAST_STEP = 4, 12


# ----------------------------------------------------------------------------- engine access


def _jax_steps(workdir):
    return Checkpoints(workdir, read_only=True).complete_steps()


def _jax_state(workdir, config, step=None):
    """{name: ndarray} of everything checkpoint `step` (default: the newest) holds."""
    checkpoints = Checkpoints(workdir, read_only=True)
    step = checkpoints.latest_step() if step is None else step
    state, _ = checkpoints.restore(step, train.Trainer(config, STEPS_PER_EPOCH).abstract_state(0))
    checkpoints.close()
    return _flat(state)


def _jax_interrupted(workdir, step) -> bool:
    """Whether a save of `step` in flight left its files behind (not committed)."""
    return os.path.isdir(os.path.join(workdir, "checkpoints", f"{step}.orbax-checkpoint-tmp"))


def _ms_steps(workdir):
    return ms_checkpoints.Checkpoints(workdir, read_only=True).all_steps()


def _ms_state(workdir, config=None, step=None):
    """{name: ndarray} of everything MindSpore checkpoint `step` (default: the newest) holds."""
    checkpoints = ms_checkpoints.Checkpoints(workdir, read_only=True)
    return checkpoints.restore(checkpoints.latest_step() if step is None else step)[0]


def _ms_interrupted(workdir, step) -> bool:
    """Whether a save of `step` left a temporary file, or a meta file without its .ckpt."""
    directory = os.path.join(workdir, "ms_checkpoints")
    names = os.listdir(directory)
    return any(n.startswith(f".tmp-{step}-") for n in names) or (
        f"ckpt_{step}.json" in names and f"ckpt_{step}.ckpt" not in names)


BACKENDS = {
    "jax": {"engine": train, "steps": _jax_steps, "state": _jax_state, "interrupted": _jax_interrupted,
            "checkpoint": lambda workdir, step: f"{workdir}/checkpoints/{step}", "reference": "reference",
            "worker": []},
    "mindspore": {"engine": ms_train, "steps": _ms_steps, "state": _ms_state, "interrupted": _ms_interrupted,
                  "checkpoint": lambda workdir, step: f"{workdir}/ms_checkpoints/ckpt_{step}.ckpt",
                  "reference": "ms_reference", "worker": ["--backend=mindspore"]},
}


def _flat(tree):
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(value) for path, value in leaves}


def assert_same_arrays(actual: dict, expected: dict):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(actual[key], value, err_msg=key)


def snapshot(directory) -> dict:
    """relative path -> (size, sha256) of every file under `directory`."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = (os.path.getsize(path), hashlib.sha256(f.read()).hexdigest())
    return out


# ----------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_folder(str(tmp_path_factory.mktemp("tiny_folder")))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run: (workdir, final eval result); checkpoints at steps 4, 8 and 12."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = train.train_and_evaluate(reliability_config(data), workdir)
    assert _jax_steps(workdir) == [4, 8, LAST_STEP]
    return workdir, result


@pytest.fixture(scope="module")
def ms_reference(data, tmp_path_factory):
    """An uninterrupted MindSpore run: (workdir, final eval result); checkpoints at steps 4, 8 and 12."""
    workdir = str(tmp_path_factory.mktemp("ms_uninterrupted"))
    result = ms_train.train_and_evaluate(reliability_config(data), workdir)
    assert _ms_steps(workdir) == [4, 8, LAST_STEP]
    return workdir, result


def copy_run(reference_dir, destination, *, up_to: int) -> str:
    """A copy of a finished run (either engine) as if it had stopped after checkpoint `up_to`."""
    shutil.copytree(reference_dir, destination)
    for name in os.listdir(os.path.join(destination, "checkpoints")) if os.path.isdir(
            os.path.join(destination, "checkpoints")) else []:
        if name.isdigit() and int(name) > up_to:
            shutil.rmtree(os.path.join(destination, "checkpoints", name))
    for name in os.listdir(os.path.join(destination, "ms_checkpoints")) if os.path.isdir(
            os.path.join(destination, "ms_checkpoints")) else []:
        if int(re.match(r"ckpt_(\d+)\.", name).group(1)) > up_to:
            os.remove(os.path.join(destination, "ms_checkpoints", name))
    metrics_lib.truncate_after(str(destination), up_to)
    return str(destination)


def start_worker(data, workdir, overrides=None, *options):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")  # with the run's compilation cache (tests/conftest.py)
    return subprocess.Popen([sys.executable, WORKER, data, workdir, json.dumps(overrides or {}), *options], cwd=ROOT,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_train_step(workdir, step, proc, timeout=300) -> int:
    """The newest train step in workdir/metrics.jsonl once it is >= `step`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [r["step"] for r in metrics_lib.read_metrics(workdir) if r.get("split") == "train"]
        if steps and steps[-1] >= step:
            return steps[-1]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no train step {step} in {workdir}/metrics.jsonl after {timeout} s")


# ----------------------------------------------------------------------------- 1, 2: kill -9 and SIGTERM


@pytest.mark.slow  # ~45 s each on 2 cores: three worker processes and a resume
@pytest.mark.parametrize("backend", ["jax", "mindspore"])
def test_sigterm_then_kill_9_inside_a_save_then_resume_ends_with_the_uninterrupted_parameters(
        backend, data, tmp_path, capsys, request):
    ops = BACKENDS[backend]
    reference = request.getfixturevalue(ops["reference"])
    workdir = str(tmp_path / "run")
    config = reliability_config(data)

    # 1. preemption: SIGTERM once step 2 is logged -> checkpoint of the current step, exit 0, promptly.
    # The batches come 1 s apart, so the signal lands in step 3 (a step itself takes milliseconds: at full
    # speed the run could pass the end of epoch 1, step 4, before the test had read step 2's line)
    proc = start_worker(data, workdir, {}, "--seconds-per-batch=1", *ops["worker"])
    seen = wait_for_train_step(workdir, 2, proc)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    seconds = time.monotonic() - signalled
    assert proc.returncode == 0, err[-3000:]
    stopped = int(re.search(r"stopped at step (\d+); checkpoint saved, run again to resume", out).group(1))
    assert seen < stopped < 2 * STEPS_PER_EPOCH  # the step under way, not the end of the epoch or the run
    assert seconds < 60, f"{seconds:.0f} s from SIGTERM to exit"
    assert ops["steps"](workdir) == [stopped]

    # 2. resume, then SIGKILL inside the save of the second epoch end after it, files written, not committed
    killed_at = (stopped // STEPS_PER_EPOCH + 2) * STEPS_PER_EPOCH
    complete = (stopped // STEPS_PER_EPOCH + 1) * STEPS_PER_EPOCH
    proc = start_worker(data, workdir, {}, f"--kill-in-save={killed_at}", *ops["worker"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert f"resumed from {ops['checkpoint'](workdir, stopped)} (step {stopped}," in out
    assert f"killing myself inside the save of step {killed_at}" in out
    assert ops["interrupted"](workdir, killed_at)  # the half-made checkpoint is there...
    assert ops["steps"](workdir) == [stopped, complete]  # ...and never counted as one
    # lines for steps after the newest complete checkpoint (the save is asynchronous: training went
    # on while it was written), and one line cut short by the kill
    after = [r for r in metrics_lib.read_metrics(workdir) if r["step"] > complete]
    assert len(after) >= killed_at - complete
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(f'{{"step": {after[-1]["step"] + 1}, "epoch": 3, "split": "tr')

    # 3. run again: resumes from the newest complete checkpoint and ends where the uninterrupted run did
    capsys.readouterr()
    result = ops["engine"].train_and_evaluate(config, workdir)
    out = capsys.readouterr().out
    assert f"resumed from {ops['checkpoint'](workdir, complete)} (step {complete}," in out
    assert f"metrics.jsonl: dropped {len(after) + 1} line(s) written after step {complete}" in out
    assert not ops["interrupted"](workdir, killed_at)
    assert ops["steps"](workdir) == sorted({stopped, complete, killed_at, LAST_STEP})
    train_steps = [r["step"] for r in metrics_lib.read_metrics(workdir) if r["split"] == "train"]
    assert train_steps == list(range(1, LAST_STEP + 1))  # every step once: none lost, none twice
    reference_dir, reference_result = reference
    assert_same_arrays(ops["state"](workdir, config), ops["state"](reference_dir, config))
    assert result["top1"] == reference_result["top1"] and result["loss"] == reference_result["loss"]


SECOND_SIGNAL_SCRIPT = """
import os, signal, sys, time
from mobilenets_core.preemption import StopOnSignal
partial = sys.argv[1]
signal.signal(signal.SIGINT, signal.default_int_handler)  # a shell's background job starts with SIGINT ignored
with StopOnSignal(abandon=lambda: os.remove(partial)) as signals:
    os.kill(os.getpid(), signal.SIGINT)
    assert signals.signal == signal.SIGINT  # the first one only asks the loop to stop
    print("first signal noted", flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # the handler runs between bytecodes; it must not get past here
print("not stopped")
"""


def test_a_second_signal_stops_at_once_removing_the_save_in_flight(tmp_path):
    """The loop both engines run (mobilenets_core.loop) stops on the first signal; a second one does not wait:
    it removes what the save under way has written (`abandon`), says so in one line, and exits 130."""
    partial = tmp_path / "12.orbax-checkpoint-tmp"
    partial.write_text("half a checkpoint")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SECOND_SIGNAL_SCRIPT, str(partial)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert time.monotonic() - started < 5
    assert proc.returncode == 128 + signal.SIGINT
    assert proc.stdout == "first signal noted\n"
    assert proc.stderr == ("stopped at once by a second SIGINT: this step is not checkpointed; run again to resume "
                           "from the newest complete checkpoint\n")
    assert not partial.exists()


# ----------------------------------------------------------------------------- 3: non-finite loss


def poison(monkeypatch, epoch: int, index: int):
    """Make the images of batch `index` of `epoch` NaN (every train split of every dataset)."""
    real = Dataset.train_batches

    def train_batches(self, global_batch, *, epoch, start_step=0):
        for i, batch in enumerate(real(self, global_batch, epoch=epoch, start_step=start_step), start=start_step):
            if (epoch, i) == poisoned:
                batch = dict(batch, image=np.full(batch["image"].shape, np.nan, np.float32))
            yield batch

    poisoned = (epoch, index)
    monkeypatch.setattr(Dataset, "train_batches", train_batches)


def test_a_non_finite_step_stops_the_run_at_that_step_and_keeps_the_checkpoints(data, reference, tmp_path,
                                                                                  monkeypatch):
    workdir = copy_run(reference[0], tmp_path / "run", up_to=4)
    config = reliability_config(data, {"train.log_every_steps": 4})
    before = _jax_state(workdir, config, 4)
    poison(monkeypatch, epoch=1, index=2)  # step 4 + 3 = 7; the next log line would be at step 8
    with pytest.raises(NonFiniteLoss, match=r"^loss is nan at step 7 \(epoch 2\): the loss or gradients of this step "
                                            r"are not finite, so it was not applied and training stopped; the newest "
                                            r"checkpoint, step 4, is intact\. Lower optimizer\.learning_rate"):
        train.train_and_evaluate(config, workdir)
    assert _jax_steps(workdir) == [4]
    assert_same_arrays(_jax_state(workdir, config, 4), before)
    assert max(r["step"] for r in metrics_lib.read_metrics(workdir)) == 4  # nothing logged from the bad step


def test_dynamic_loss_scale_skips_a_non_finite_step_and_only_counts_it(data, tmp_path, monkeypatch, capsys):
    config = reliability_config(data, {"mixed_precision.loss_scale": 0.0, "mixed_precision.dynamic_init": 1024.0,
                                       "mixed_precision.dynamic_window": 2, "ema.decay": 0.5})
    trainer = train.Trainer(config, STEPS_PER_EPOCH)
    state = trainer.init_state(0)
    assert float(state.loss_scale["scale"]) == 1024.0
    assert_same_arrays(_flat(state.ema_params), _flat(state.params))  # the EMA starts at the weights
    batches = list(build_dataset(config, "train").train_batches(32, epoch=0))
    before = _flat(state)
    state, metrics = trainer.train_step(state, trainer.to_global(dict(batches[0], image=np.full(
        batches[0]["image"].shape, np.nan, np.float32))))
    after = _flat(state)
    assert not bool(metrics["finite"])
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k], equal_nan=True))
    schedule_count = [k for k in changed if k.startswith(".opt_state") and k.endswith(".count")]
    assert changed == sorted([".step", ".loss_scale['scale']", ".loss_scale['overflow_steps']", *schedule_count])
    assert len(schedule_count) == 1 and int(after[schedule_count[0]]) == 1  # the rate index advances
    assert int(after[".step"]) == 1 and int(after[".loss_scale['overflow_steps']"]) == 1
    assert float(after[".loss_scale['scale']"]) == 512.0  # halved
    state, metrics = trainer.train_step(state, trainer.to_global(batches[1]))
    assert bool(metrics["finite"]) and float(metrics["lr"]) == float(trainer.lr[1])
    assert float(state.loss_scale["scale"]) == 512.0 and int(state.loss_scale["good_steps"]) == 1
    moved = _flat(state)
    assert all(not np.array_equal(moved[k], before[k]) for k in before if k.startswith(".params") and "kernel" in k)
    state, _ = trainer.train_step(state, trainer.to_global(batches[2]))
    assert float(state.loss_scale["scale"]) == 1024.0 and int(state.loss_scale["good_steps"]) == 0  # doubled

    # In the loop: the run goes on, and metrics.jsonl counts the skipped step.
    poison(monkeypatch, epoch=0, index=1)
    assert train.train_and_evaluate(config, str(tmp_path), stop=lambda step: step == 3) is None
    lines = [r for r in metrics_lib.read_metrics(str(tmp_path)) if r["split"] == "train"]
    assert [(r["step"], r["overflow_steps"]) for r in lines] == [(1, 0), (2, 1), (3, 1)]
    assert np.isnan(lines[1]["loss"]) and np.isfinite(lines[2]["loss"])  # a mean over applied steps only
    assert _flat(Checkpoints(str(tmp_path), read_only=True).restore(3, trainer.abstract_state(0))[0].loss_scale) == \
        {"['good_steps']": 1, "['overflow_steps']": 1, "['scale']": 512.0}


# ----------------------------------------------------------------------------- 4: bad configuration


def run_main(*args, env=None):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))


@pytest.mark.parametrize("args,message", [
    (["--config.train.bach_size=8"], "error: unknown config key 'train.bach_size' (did you mean train.batch_size?); "
                                     "valid keys in train: batch_size, dtype, epochs, log_every_steps, seed"),
    (["--config.train.epochs=2.5"], "error: --config.train.epochs='2.5' is not an integer (invalid literal for int() "
                                    "with base 10: '2.5'); the recipe has train.epochs="),
    (["--config.optimizer.nesterov=maybe"], "error: --config.optimizer.nesterov='maybe' is not true or false"),
    (["--config.optimizer.learning_rate=-0.1"], "error: optimizer.learning_rate=-0.1 must not be negative"),
    (["--config.optimizer.momentum=1.5"],
     "error: optimizer.momentum=1.5 must be below 1 (accepted: 0 <= momentum < 1)"),
    (["--config.model.width=0.3"], "error: model.width=0.3 is not supported for mobilenet_v3_small; supported widths: "
                                   "0.5, 0.75, 1.0"),
    (["--config.model.groups=3"], "error: model.groups=3 applies to shufflenet_v1 only; leave it unset (None) for "
                                  "mobilenet_v3_small"),
    (["--config.schedule.warmup_epochs=3", "--config.train.epochs=2"],
     "error: schedule.warmup_epochs=3.0 is longer than train.epochs=2; use at most 2"),
    (["--config.dataset.name=folder"], "error: dataset.name='folder' needs dataset.path"),
    (["--config.mixed_precision.dynamic_factor=1"], "error: mixed_precision.dynamic_factor=1.0 must be above 1"),
    (["--config.dataset.image_size=100000"], "error: dataset.image_size=100000 is above 4096, the largest accepted: "
                                             "one batch of 64 such images is 7,153 GiB of input alone"),
])
def test_config_mistakes_stop_in_one_line_before_any_work(tmp_path, args, message, backend="jax"):
    workdir = tmp_path / "run"
    result = run_main("--config=configs/mnv3_small.py", f"--workdir={workdir}", "--config.dataset.name=digits",
                      f"--backend={backend}", *args)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.strip()] == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(message), result.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("args,message", [
    (["--config.train.bach_size=8"], "error: unknown config key 'train.bach_size' (did you mean train.batch_size?)"),
    (["--config.schedule.warmup_epochs=3", "--config.train.epochs=2"],
     "error: schedule.warmup_epochs=3.0 is longer than train.epochs=2; use at most 2"),
])
def test_config_mistakes_stop_in_one_line_on_the_mindspore_engine_too(tmp_path, args, message):
    test_config_mistakes_stop_in_one_line_before_any_work(tmp_path, args, message, backend="mindspore")


def test_missing_recipe_and_a_batch_the_devices_cannot_split_are_one_line(tmp_path):
    result = run_main("--config=configs/mnv9.py", "--mode=summary")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: --config=configs/mnv9.py: no such recipe file; recipes: "
                                            "configs/mnv1.py, configs/mnv2.py, configs/mnv3_large.py, "
                                            "configs/mnv3_small.py, configs/mnv3_transfer.py, configs/mnv4.py")
    workdir = tmp_path / "run"
    result = run_main("--config=configs/mnv3_small.py", f"--workdir={workdir}", "--config.dataset.name=digits",
                      "--config.train.batch_size=64", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == ("error: train.batch_size=64 is not divisible by the 3 devices; "
                                                      "use a multiple of 3")
    assert not workdir.exists() or not any(p.is_file() for p in workdir.rglob("*"))


# ----------------------------------------------------------------------------- 5: bad data


def _png(array, mode=None, **save) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format=save.pop("format", "PNG"), **save)
    return out.getvalue()


def test_image_modes_are_converted_to_8_bit_rgb_and_counted():
    gray = np.full((40, 40), 100, np.uint8)
    report = preprocess.DecodeReport()

    def decoded(record):
        return preprocess.preprocess(record, size=32, train=False, small=True, flip=False, report=report)

    rgb16 = decoded(_png(np.full((40, 40), 40000, np.uint16)))  # 16-bit grayscale PNG
    assert rgb16.shape == (32, 32, 3) and rgb16.dtype == np.uint8
    assert set(np.unique(rgb16)) == {round(40000 / 257)}  # scaled, not clipped to 255
    rgba = np.dstack([np.full((40, 40, 3), (10, 200, 30), np.uint8), np.full((40, 40), 128, np.uint8)])
    assert (decoded(_png(rgba)) == (10, 200, 30)).all()
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    out = io.BytesIO()
    cmyk.save(out, format="JPEG", quality=95)
    assert np.abs(decoded(out.getvalue()).astype(int) - (255, 0, 0)).max() <= 8
    assert (decoded(_png(gray)) == 100).all()
    assert report.converted == {"I;16": 1, "RGBA": 1, "CMYK": 1, "L": 1}
    assert "4 image(s) converted to 8-bit RGB (CMYK: 1, I;16: 1, L: 1, RGBA: 1)" in report.summary()


def _digit_folder(root, *, per_class=6, classes=("0", "1", "2")):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split in ("train", "validation"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            images = digits.images[digits.target == int(name)]
            for i in range(per_class):
                pixels = np.round(images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(folder / f"{i}.jpg", quality=90)
    return root


def test_truncated_corrupt_and_non_image_files_are_repaired_or_skipped_and_counted(tmp_path):
    root = _digit_folder(tmp_path)
    whole = (root / "train" / "0" / "0.jpg").read_bytes()
    (root / "train" / "0" / "0.jpg").write_bytes(whole[:len(whole) * 2 // 3])  # truncated: decodes partially
    (root / "train" / "1" / "0.jpg").write_bytes(b"this is not a JPEG" * 10)  # an image name, no image
    (root / "train" / "2" / "0.jpg").write_bytes(whole[:200] + bytes(200))  # header, then garbage
    (root / "train" / "2" / "notes.txt").write_text("labels were checked by hand")  # not an image: skipped
    config = reliability_config(str(root), {"model.num_classes": 3})
    dataset = build_dataset(config, "train")
    assert dataset.num_examples == 18
    assert dataset.notes == [f"{root}/train: skipped 1 file(s) that are not .jpg/.jpeg/.png (in ['2'])"]
    batches = list(dataset.eval_batches(18))  # every example once, none raises
    assert batches[0]["image"].shape == (18, 32, 32, 3) and batches[0]["image"].dtype == np.uint8
    report = dataset.decode_report
    assert sorted(what for what, _ in report.bad) == [f"{root}/train/1/0.jpg", f"{root}/train/2/0.jpg"]
    assert "not an image" in min(report.bad)[1]
    assert report.truncated == [f"{root}/train/0/0.jpg"]
    # the placeholder is the mean color: about 0 after normalization
    images = preprocess.normalize(batches[0]["image"])
    assert np.abs(images[6]).max() < 0.01 and np.abs(images[12]).max() < 0.01
    assert np.abs(images[0]).max() > 0.5  # the truncated one keeps its decoded part
    line = dataset.take_report()
    assert line.startswith("folder train: 2 unreadable image(s) replaced by a gray placeholder (first: "
                           f"{root}/train/1/0.jpg: not an image") and "1 truncated image(s) decoded partially" in line
    assert dataset.take_report() is None  # counted once, then reset


def test_exif_orientation_is_applied_and_counted():
    """A phone's portrait photo: stored landscape, with EXIF orientation 6 (turn 90 degrees clockwise)."""
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = (250, 0, 0)  # left half red, right half blue, as stored
    stored[:, 40:] = (0, 0, 250)
    exif = Image.Exif()
    exif[preprocess.EXIF_ORIENTATION] = 6
    out = io.BytesIO()
    Image.fromarray(stored).save(out, format="JPEG", quality=95, exif=exif)
    report = preprocess.DecodeReport()
    upright = preprocess.preprocess(out.getvalue(), size=40, train=False, small=True, flip=False, report=report)
    # turned clockwise, the stored left half is now on top
    assert np.abs(upright[:16].astype(int) - (250, 0, 0)).max() <= 12
    assert np.abs(upright[24:].astype(int) - (0, 0, 250)).max() <= 12
    assert report.rotated == 1 and report.summary() == "1 image(s) turned upright by their EXIF orientation"


def test_an_image_too_large_to_decode_is_skipped_with_its_size_never_called_corrupt(tmp_path):
    root = _digit_folder(tmp_path)
    # first in its folder, so the source's look at the typical image meets it too; 225 Mpixels,
    # beyond PIL's own decompression-bomb limit, a few kB on disk
    Image.new("1", (15000, 15000)).save(root / "train" / "0" / "0-huge.png")
    config = reliability_config(str(root), {"model.num_classes": 3})
    dataset = build_dataset(config, "train")
    assert dataset.num_examples == 19 and dataset.small_images  # the typical image decides, not this one
    batch = next(iter(dataset.eval_batches(19)))
    assert np.abs(preprocess.normalize(batch["image"][0])).max() < 0.01  # the gray placeholder, in its own row
    assert dataset.decode_report.bad == [] and dataset.decode_report.truncated == []
    assert dataset.take_report() == (
        f"folder train: 1 image(s) too large to decode replaced by a gray placeholder (first: "
        f"{root}/train/0/0-huge.png: 15000x15000 pixels, above dataset.max_image_pixels=178956970; raise it to "
        f"train on such images)")
    # a valid image above PIL's own bomb limit (89 Mpixels) but below ours opens as an image, not "corrupt"
    Image.new("1", (12000, 12000)).save(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would be an error here
        assert preprocess._decode(str(tmp_path / "big.png"), None)[0].size == (12000, 12000)
    # a limit of its own: the 32x32 digits decode, a 100x100 image is skipped
    Image.new("RGB", (100, 100)).save(root / "train" / "1" / "big.png")
    config.dataset.max_image_pixels = 5000
    dataset = build_dataset(config, "train")
    list(dataset.eval_batches(20))
    assert sorted(what for what, _ in dataset.decode_report.too_large) == [f"{root}/train/0/0-huge.png",
                                                                      f"{root}/train/1/big.png"]


def test_predict_names_an_input_that_is_not_an_image(tmp_path):
    from mobilenets_core import predict

    (tmp_path / "cat.jpg").write_text("not a cat")
    with pytest.raises(ConfigError, match=rf"^predict.inputs: {tmp_path}/cat.jpg is not a readable image \(not an "
                                          r"image \(UnidentifiedImageError\)\); remove it"):
        predict.prepare(str(tmp_path / "cat.jpg"), 32)


def test_unrecoverable_data_stops_with_a_clear_message(tmp_path):
    root = _digit_folder(tmp_path, per_class=12)
    for path in (root / "train").rglob("*.jpg"):
        path.write_bytes(b"\x00" * 64)  # a folder of broken files: a mistake, not bad luck
    config = reliability_config(str(root), {"model.num_classes": 3})
    with pytest.raises(ConfigError, match=r"none of the first 32 images under .* can be decoded"):
        build_dataset(config, "train")
    root = _digit_folder(tmp_path / "b", per_class=12)
    for path in sorted((root / "train").rglob("*.jpg"))[1:21]:  # 20 of 36 broken, the first one fine
        path.write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match=r"^\d+ of the last \d+ images of folder train could not be decoded \(latest: "
                                          r".*\); fix or remove those files, or check that dataset.path"):
        list(build_dataset(reliability_config(str(root), {"model.num_classes": 3}), "train").eval_batches(12))
    root = _digit_folder(tmp_path / "c")
    for path in (root / "train" / "1").iterdir():
        path.unlink()
    with pytest.raises(ConfigError, match=r"train/1/ holds no .jpg/.jpeg/.png images; add images or remove the folder"):
        build_dataset(reliability_config(str(root), {"model.num_classes": 3}), "train")
    root = _digit_folder(tmp_path / "d")
    for path in (root / "validation" / "1").iterdir():  # a class the validation split happens to lack: a note
        path.unlink()
    validation = build_dataset(reliability_config(str(root), {"model.num_classes": 3}), "validation")
    assert validation.num_examples == 12
    assert validation.notes == [f"{root}/validation: 1 class folder(s) without images: ['1']"]


def test_ms_engine_logs_repaired_images_and_stops_on_a_missing_dataset(tmp_path, capsys):
    root = _digit_folder(tmp_path / "data", per_class=12)  # 36 train / 36 validation images, one step each
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    (root / "train" / "1" / "3.jpg").write_bytes(cmyk.getvalue())
    (root / "train" / "2" / "5.jpg").write_bytes(b"this is not a JPEG" * 10)
    (root / "validation" / "0" / "7.jpg").write_bytes(b"\xff\xd8" + bytes(300))  # a JPEG header, then nothing
    (root / "train" / "0" / "notes.txt").write_text("labels were checked by hand")
    config = reliability_config(str(root), {"model.num_classes": 3, "train.batch_size": 36, "eval.batch_size": 36,
                                            "train.epochs": 1})
    result = ms_train.train_and_evaluate(config, str(tmp_path / "run"))
    out = capsys.readouterr().out.splitlines()
    assert result["count"] == 36 and _ms_steps(str(tmp_path / "run")) == [1]  # bad images replaced, not dropped
    assert f"{root}/train: skipped 1 file(s) that are not .jpg/.jpeg/.png (in ['0'])" in out
    assert [line for line in out if line.startswith("folder train: ")] == [
        f"folder train: 1 unreadable image(s) replaced by a gray placeholder (first: {root}/train/2/5.jpg: not an "
        f"image (no known image format)); 1 image(s) converted to 8-bit RGB (CMYK: 1)"]
    assert [line for line in out if line.startswith("folder validation: ")][0].startswith(
        f"folder validation: 1 unreadable image(s) replaced by a gray placeholder (first: {root}/validation/0/7.jpg")

    missing = reliability_config(str(tmp_path / "no_such_folder"), {"model.num_classes": 3})
    with pytest.raises(ConfigError, match=rf"^dataset.path='{tmp_path}/no_such_folder' does not exist or is not a "
                                          r"directory$"):
        ms_train.train_and_evaluate(missing, str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()


def test_jax_engine_refuses_a_missing_dataset_before_writing_the_workdir(tmp_path):
    missing = reliability_config(str(tmp_path / "no_such_folder"), {"model.num_classes": 3})
    with pytest.raises(ConfigError, match=rf"^dataset.path='{tmp_path}/no_such_folder' does not exist or is not a "
                                          r"directory$"):
        train.train_and_evaluate(missing, str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()  # the checkpoint manager is opened after the data


# ----------------------------------------------------------------------------- 6: bad checkpoints and weights


def snapshot_with_times(directory) -> dict:
    """`snapshot` plus each file's modification time: rewriting a file with the same bytes shows too."""
    return {path: (*digest, os.stat(os.path.join(directory, path)).st_mtime_ns)
            for path, digest in snapshot(directory).items()}


def test_a_workdir_of_another_model_or_training_state_is_refused_untouched(data, reference, tmp_path):
    workdir = copy_run(reference[0], tmp_path / "run", up_to=LAST_STEP)
    before = snapshot(workdir)
    with pytest.raises(ConfigError, match=r"holds checkpoints \(newest step 12\) of model.width=0.25; this config has "
                                          r"model.width=0.5: set the same values to resume or evaluate them, or use "
                                          r"another --workdir"):
        train.train_and_evaluate(reliability_config(data, {"model.width": 0.5}), workdir)
    with pytest.raises(ConfigError, match=r"model.num_classes=4; this config has model.num_classes=5"):
        train.evaluate(reliability_config(data, {"model.num_classes": 5}), workdir)
    with pytest.raises(ConfigError, match=rf"^{workdir} resumes from step 12 of a run with another recipe: "
                                          r"optimizer.name 'momentum' -> 'adamw'\. Use the run's values, another "
                                          r"--workdir, or accept the change on purpose with "
                                          r"--config.resume.allow=optimizer.name$"):
        train.train_and_evaluate(reliability_config(data, {"optimizer.name": "adamw"}), workdir)
    # accepted on purpose, the change still cannot load the momentum run's training state
    with pytest.raises(ConfigError, match=r"checkpoint step 12 in .* \(name=mobilenet_v1 width=0.25 groups=None "
                                          r"num_classes=4 variant=None\) does not fit this config's training state: \d+ missing "
                                          r"\(first: opt_state/.*\); \d+ unexpected \(first: opt_state/"):
        train.train_and_evaluate(reliability_config(data, {"optimizer.name": "adamw",
                                                           "resume.allow": "optimizer.name"}), workdir)
    with pytest.raises(ConfigError, match=r"\d+ missing \(first: ema_params/"):
        train.train_and_evaluate(reliability_config(data, {"ema.decay": 0.9, "resume.allow": "ema.decay"}), workdir)
    assert snapshot(workdir) == before


def test_a_damaged_checkpoint_is_named_with_the_step_to_fall_back_to(data, reference, tmp_path):
    workdir = copy_run(reference[0], tmp_path / "run", up_to=LAST_STEP)
    data_files = os.path.join(workdir, "checkpoints", "12", "state", "ocdbt.process_0", "d")
    for name in os.listdir(data_files):
        with open(os.path.join(data_files, name), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(data_files, name)) // 2)
    before = snapshot(workdir)
    with pytest.raises(CheckpointError, match=rf"^checkpoint step 12 in {workdir}/checkpoints cannot be read \(.*\); "
                                              rf"move {workdir}/checkpoints/12 out of the way to use step 8 "
                                              r"\(available: \[4, 8\]\)$"):
        train.train_and_evaluate(reliability_config(data), workdir)
    assert snapshot(workdir) == before


def test_weight_files_that_do_not_fit_or_are_not_weights_are_named(tmp_path):
    wanted = ModelInfo("mobilenet_v1", 0.25, None, 4, 1e-5)
    arch = wanted.architecture()
    other = specs.build_architecture("mobilenet_v3_small", 0.5, None, 4)
    weights.save(str(tmp_path / "v3.safetensors"), random_canonical_state(other),
                 weights.ModelInfo("mobilenet_v3_small", 0.5, None, 4, 1e-5))
    with pytest.raises(ConfigError, match=r"holds model.name='mobilenet_v3_small', model.width=0.5 \(by its "
                                          r"metadata\); this config has model.name='mobilenet_v1', "
                                          r"model.width=0.25: set those to the file's values, or use weights of "
                                          r"this network\n"):
        reader.read(str(tmp_path / "v3.safetensors"), wanted)
    good = random_canonical_state(arch)
    weights.save(str(tmp_path / "v1.safetensors"), good, weights.ModelInfo("mobilenet_v1", 0.25, None, 4, 1e-5))
    whole = (tmp_path / "v1.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[:len(whole) // 2])
    mindspore_ckpt.write(str(tmp_path / "v1.ckpt"), mindspore_ckpt.from_canonical(good))
    ckpt = (tmp_path / "v1.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(ckpt[:len(ckpt) - 1000])
    (tmp_path / "notes.ckpt").write_text("epoch 3: loss 0.71\n" * 20)
    (tmp_path / "image.safetensors").write_bytes(_png(np.zeros((8, 8), np.uint8)))
    (tmp_path / "weights.npz").write_bytes(b"PK")
    cases = {"cut.safetensors": r"could not be read as .safetensors",
             "cut.ckpt": r"cannot be read as a MindSpore checkpoint \(ValueError: .* is not a readable MindSpore "
                         r"checkpoint \(truncated field\)\); is the file complete, and is it a MindSpore checkpoint\?",
             "notes.ckpt": r"cannot be read as a MindSpore checkpoint \(ValueError: ",
             "image.safetensors": r"could not be read as .safetensors",
             "weights.npz": r"unknown weight file type; expected a canonical or timm .safetensors"}
    for name, message in cases.items():
        with pytest.raises(ConfigError, match=rf"^init.weights='{tmp_path}/{name}'.* {message}|^init.weights="
                                              rf"'{tmp_path}/{name}'.*{message}"):
            reader.read(str(tmp_path / name), wanted)
    file = reader.read(str(tmp_path / "v1.ckpt"), wanted)  # the whole file still reads
    assert file.kind == "MindSpore checkpoint" and sorted(file.state) == sorted(good)


def test_initial_weights_of_another_width_stop_before_anything_is_written(data, reference, tmp_path):
    workdir = tmp_path / "fresh"
    config = reliability_config(data, {"model.width": 0.5, "init.weights": reference[0]})
    with pytest.raises(ConfigError, match=rf"init.weights='{reference[0]}' holds model.width=0.25 \(by its checkpoint "
                                          r"metadata\); this config has model.width=0.5"):
        train.train_and_evaluate(config, str(workdir))
    assert [p for p in workdir.rglob("*") if p.is_file()] == []


def test_ms_a_checkpoint_of_another_model_or_training_state_is_refused_untouched(data, ms_reference, tmp_path):
    workdir = copy_run(ms_reference[0], tmp_path / "run", up_to=LAST_STEP)
    directory = f"{workdir}/ms_checkpoints"
    before = snapshot_with_times(workdir)
    with pytest.raises(ConfigError, match=rf"^{directory} holds checkpoints \(newest step 12\) of model.width=0.25; "
                                          r"this config has model.width=0.5: set the same values to resume or "
                                          r"evaluate them, or use another --workdir$"):
        ms_train.train_and_evaluate(reliability_config(data, {"model.width": 0.5}), workdir)
    with pytest.raises(ConfigError, match=r"of model.num_classes=4; this config has model.num_classes=5"):
        ms_train.evaluate(reliability_config(data, {"model.num_classes": 5}), workdir)
    with pytest.raises(ConfigError, match=rf"^{workdir} resumes from step 12 of a run with another recipe: "
                                          r"optimizer.name 'momentum' -> 'adamw'\. "):
        ms_train.train_and_evaluate(reliability_config(data, {"optimizer.name": "adamw"}), workdir)
    with pytest.raises(ConfigError, match=rf"^checkpoint step 12 in {directory} does not fit mobilenet_v1 width=0.25 "
                                          r"groups=None num_classes=4 optimizer=adamw ema.decay=0.0: missing "
                                          r"\['adam_m\..*use the config it was trained with, or another --workdir$"):
        ms_train.train_and_evaluate(reliability_config(data, {"optimizer.name": "adamw",
                                                              "resume.allow": "optimizer.name"}), workdir)
    with pytest.raises(ConfigError, match=r"ema.decay=0.9: missing \['ema\."):
        ms_train.train_and_evaluate(reliability_config(data, {"ema.decay": 0.9, "resume.allow": "ema.decay"}), workdir)
    other_classes = str(_digit_folder(tmp_path / "other_data", per_class=8, classes=("0", "1", "2", "3")))
    with pytest.raises(ConfigError, match=rf"^checkpoint step 12 in {directory} was trained on 'folder' with classes "
                                          r"\['digit_0', 'digit_1', 'digit_2', 'digit_3'\]; this config's dataset "
                                          r"'folder' has \['0', '1', '2', '3'\]: point dataset.\* at the same data"):
        ms_train.train_and_evaluate(reliability_config(other_classes), workdir)
    assert snapshot_with_times(workdir) == before
    # a network checkpoint of another model, with no meta to name it by: the tensors that differ
    other = specs.build_architecture("mobilenet_v3_small", 0.5, None, 4)
    mindspore_ckpt.write(f"{directory}/ckpt_16.ckpt", mindspore_ckpt.from_canonical(random_canonical_state(other)))
    before = snapshot_with_times(workdir)
    with pytest.raises(ConfigError, match=rf"^checkpoint step 16 in {directory} does not fit mobilenet_v1 "
                                          r"width=0.25 .*: missing \[.*shape mismatch \[.*\]; use the config"):
        ms_train.train_and_evaluate(reliability_config(data), workdir)
    assert snapshot_with_times(workdir) == before


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint"])
def test_ms_a_damaged_checkpoint_is_named_with_the_step_to_fall_back_to(data, ms_reference, tmp_path, damage):
    workdir = copy_run(ms_reference[0], tmp_path / "run", up_to=LAST_STEP)
    path = f"{workdir}/ms_checkpoints/ckpt_12.ckpt"
    os.chmod(path, 0o600)  # MindSpore writes its checkpoints read-only
    if damage == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    else:
        with open(path, "w") as f:
            f.write("epoch 3: loss 0.71\n" * 20)
    before = snapshot_with_times(workdir)
    for run in (ms_train.train_and_evaluate, ms_train.evaluate):
        with pytest.raises(CheckpointError, match=rf"^checkpoint step 12 in {workdir}/ms_checkpoints cannot be read "
                                                  r"\(ValueError: Failed to read the checkpoint file .*\); move "
                                                  rf"{path} out of the way to use step 8 \(available: \[4, 8\]\)$"):
            run(reliability_config(data), workdir)
    assert snapshot_with_times(workdir) == before


def test_a_checkpoint_written_before_loss_scaling_existed_still_resumes(data, tmp_path):
    config = reliability_config(data, {"mixed_precision.loss_scale": 128.0})
    abstract = train.Trainer(config, STEPS_PER_EPOCH).abstract_state(0)
    fill = lambda s: np.full(s.shape, 3 if np.issubdtype(s.dtype, np.integer) else 0.5, s.dtype)  # noqa: E731
    old = {name: jax.tree_util.tree_map(fill, getattr(abstract, name))
           for name in ("step", "params", "batch_stats", "opt_state", "ema_params", "rng")}  # no loss_scale
    checkpoints = Checkpoints(str(tmp_path))
    checkpoints.save(3, old, {"model": ModelInfo.from_config(config.model).as_dict(), "epoch": 1})
    checkpoints.close()
    state, meta = Checkpoints(str(tmp_path), read_only=True).restore(3, abstract)
    assert int(state.step) == 3 and meta["epoch"] == 1
    assert {float(v) for leaf in jax.tree_util.tree_leaves(state.params) for v in np.ravel(leaf)} == {0.5}
    assert float(state.loss_scale["scale"]) == 128.0 and int(state.loss_scale["overflow_steps"]) == 0


# ----------------------------------------------------------------------------- 7: a save that fails


def test_a_failed_save_is_reported_and_the_previous_checkpoint_stays_loadable(data, reference, tmp_path, monkeypatch):
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    workdir = copy_run(reference[0], tmp_path / "run", up_to=4)
    write = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def disk_full_at_step_8(self, x, directory):
        if os.path.basename(os.path.dirname(str(directory))).startswith("8."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await write(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full_at_step_8)
    config = reliability_config(data)
    with pytest.raises(CheckpointError, match=rf"^could not write checkpoint step 8 to {workdir}/checkpoints "
                                              r"\(OSError: \[Errno 28\] No space left on device\); the newest "
                                              r"complete checkpoint, step 4, is intact\. Free disk space"):
        train.train_and_evaluate(config, workdir)
    assert _jax_steps(workdir)[:1] == [4] and 8 not in _jax_steps(workdir)
    assert not [p for p in os.listdir(f"{workdir}/checkpoints") if "tmp" in p]  # nothing half-written left
    assert_same_arrays(_jax_state(workdir, config, 4), _jax_state(reference[0], config, 4))


class _Unraisable:
    def __init__(self, error):
        self.error = error

    def __del__(self):
        raise self.error


def test_orbax_closed_event_loop_echoes_are_dropped_other_unraisable_errors_kept(monkeypatch):
    from mobilenets_jax import checkpoints

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(repr(unraisable.exc_value)))
    checkpoints._drop_closed_loop_echoes()
    checkpoints._drop_closed_loop_echoes()  # installed once, whatever the number of checkpoint stores
    _Unraisable(RuntimeError("Event loop is closed"))
    assert reported == []
    _Unraisable(ValueError("a real bug"))
    assert reported == ["ValueError('a real bug')"]


def test_a_library_error_is_quoted_by_its_root_cause_without_tensorstore_specs():
    from mobilenets_core.failures import first_line

    try:
        try:
            raise ValueError("OUT_OF_RANGE: Error reading \"params.stem/0\": byte range [0, 9) is not valid "
                             "[tensorstore_spec='{\"driver\": \"zarr\"}']\nmore")
        except ValueError as cause:
            raise Exception("Encountered error while reading array index. See full TensorStore details: "
                            "<bound method spec of TensorStore({") from cause
    except Exception as error:  # noqa: BLE001
        assert first_line(error) == ('ValueError: OUT_OF_RANGE: Error reading "params.stem/0": byte range [0, 9) '
                                     'is not valid')


def test_ms_a_failed_save_is_reported_and_the_previous_checkpoint_stays_loadable(data, ms_reference, tmp_path,
                                                                                 monkeypatch, capsys):
    workdir = copy_run(ms_reference[0], tmp_path / "run", up_to=4)
    directory = f"{workdir}/ms_checkpoints"
    kept = snapshot_with_times(directory)
    write = ms_checkpoints.ms.save_checkpoint

    def disk_full_at_step_8(records, path, *args, **kwargs):
        if os.path.basename(path).startswith(".tmp-8-"):
            with open(path, "wb") as f:  # half a file, then the disk is full
                f.write(b"\x00" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(records, path, *args, **kwargs)

    monkeypatch.setattr(ms_checkpoints.ms, "save_checkpoint", disk_full_at_step_8)
    with pytest.raises(CheckpointError, match=rf"^could not write checkpoint step 8 to {directory} \(OSError: "
                                              r"\[Errno 28\] No space left on device\); the newest complete "
                                              r"checkpoint, step 4, is intact\. Free disk space"):
        ms_train.train_and_evaluate(reliability_config(data), workdir)
    assert snapshot_with_times(directory) == kept  # nothing half-written left, step 4 untouched
    assert_same_arrays(_ms_state(workdir, step=4), _ms_state(ms_reference[0], step=4))

    # the disk has room again: the rerun continues from step 4 and ends where the uninterrupted run did
    monkeypatch.setattr(ms_checkpoints.ms, "save_checkpoint", write)
    capsys.readouterr()
    result = ms_train.train_and_evaluate(reliability_config(data), workdir)
    out = capsys.readouterr().out
    assert f"resumed from {directory}/ckpt_4.ckpt (step 4, epoch 1)" in out
    assert "metrics.jsonl: dropped 4 line(s) written after step 4" in out  # steps 5-8, logged before the save
    assert [r["step"] for r in metrics_lib.read_metrics(workdir) if r["split"] == "train"] == list(range(1, 13))
    assert _ms_steps(workdir) == [4, 8, LAST_STEP]
    assert_same_arrays(_ms_state(workdir), _ms_state(ms_reference[0]))
    assert result["loss"] == ms_reference[1]["loss"]


# ----------------------------------------------------------------------------- 8: fuzzing


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, suppress_health_check=list(HealthCheck))


def _parse(args):
    """main.py's parsing and checks in this process: ('ok', config) or ('exit', message)."""
    from absl import flags

    import main
    from configs import base
    from mobilenets_core import config_check

    for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # override flags are made per argv
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    argv = ["main.py", "--config=configs/mnv3_small.py", "--mode=summary", *args]
    saved, sys.argv = sys.argv, argv
    try:
        main.parse_flags(argv)
        config = main._CONFIG.value
        base.apply_dataset_profile(config, set())
        config_check.check(config)
        return "ok", config
    except config_check.ConfigError as e:
        return "exit", f"error: {e}"
    except SystemExit as e:
        return "exit", str(e.code)
    finally:
        sys.argv = saved


def _keys():
    from configs import base

    config = base.get_config()
    return sorted(f"{s}.{f}" for s in config.keys() if hasattr(config[s], "keys") for f in config[s].keys())


@FUZZ
@given(key=st.integers(0, 4).flatmap(  # mostly real keys, sometimes a made-up one
    lambda i: st.from_regex(r"[a-z_]{1,8}\.[a-z_]{1,10}", fullmatch=True) if i == 0 else st.sampled_from(_keys())),
       value=st.one_of(st.text(max_size=12).filter(lambda v: "\n" not in v and "\r" not in v),
                       st.floats(allow_nan=True).map(repr), st.integers(-10**6, 10**6).map(str),
                       st.sampled_from(["true", "false", "None", "", "-0", "1e400", "nan", "inf", "0x10"])))
def test_fuzz_config_overrides_are_applied_or_refused_in_one_line(key, value):
    outcome, detail = _parse([f"--config.{key}={value}"])
    if outcome == "exit":
        assert detail.startswith("error: ") and "\n" not in detail, detail
        assert "Traceback" not in detail
    else:
        assert detail.model.name  # a config every check accepted


def _seed_images():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (24, 20, 3), np.uint8), rng.integers(0, 256, (9, 30), np.uint8)]
    seeds = [_png(arrays[0]), _png(arrays[1]), _png(arrays[0], format="JPEG", quality=80),
             _png(arrays[1], format="JPEG"), _png(np.dstack([arrays[0], arrays[0][..., :1]])),
             _png(arrays[0], format="GIF"), _png(np.full((5, 7), 60000, np.uint16))]
    return seeds


@FUZZ
@given(seed=st.sampled_from(_seed_images()), cut=st.floats(0, 1),
       edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
       train_mode=st.booleans(), small=st.booleans(), noise=st.binary(max_size=64))
def test_fuzz_image_decoding_returns_rgb_or_bad_image(seed, cut, edits, train_mode, small, noise):
    data = bytearray(seed[:max(1, int(len(seed) * cut))] if cut < 0.9 else seed)
    for where, byte in edits:
        data[min(len(data) - 1, int(where * len(data)))] = byte
    for record in (bytes(data), noise):
        try:
            out = preprocess.preprocess(record, size=32, train=train_mode, small=small, flip=True,
                                        rng=np.random.default_rng(0), report=preprocess.DecodeReport())
        except preprocess.BadImage as e:
            assert str(e)
            continue
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
