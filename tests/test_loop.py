"""The core training loop (mobilenets_core.loop) driven by a fake engine: what it fetches and when,
the non-finite policy under a fixed loss scale, a signal mid-run, data_ms. No framework involved."""
import math
import os
import signal

import numpy as np
import pytest

from mobilenets_core import loop
from mobilenets_core import metrics as metrics_lib
from mobilenets_core.failures import NonFiniteLoss
from tests.helpers import tiny_train_config

BATCH = 128  # digits: 1437 train images -> 11 steps an epoch


class DeviceValue:
    """A metric still on the fake device: reading it other than through `fetch` is a failure."""

    def __init__(self, row):
        self._row = row

    def __bool__(self):
        raise AssertionError("the loop read a device value inside a step")

    __float__ = __int__ = __index__ = __bool__


class FakeEngine:
    """An engine whose 'device' is a list: step k's loss is 1 / k, a step in `poisoned` is non-finite.

    It keeps the real engines' rule for a fixed loss scale: once a step is non-finite, no later
    step is applied (the state halts) until the loop notices."""

    name = "fake"
    process_index, process_count = 0, 1
    checkpoint_dir = "/fake/checkpoints"

    def __init__(self, poisoned=(), dynamic=False, on_step=None):
        self.poisoned, self.dynamic_loss_scale, self.on_step = set(poisoned), dynamic, on_step
        self.applied, self.saved, self.fetches, self.events = [], [], [], []
        self.halted = False
        self.overflows = 0

    def latest_step(self):
        return self.saved[-1][0] if self.saved else None

    def checkpoint_meta(self, step):
        return dict(self.saved)[step]

    def checkpoint_name(self, step):
        return f"fake/{step}"

    def start(self, steps_per_epoch, step, say):
        return 0 if step is None else step

    def describe(self):
        return "1 fake device(s)"

    def put(self, local_batch):
        return DeviceValue(local_batch["label"].shape)

    def train_step(self, batch, step):
        assert isinstance(batch, DeviceValue)  # the loop hands over what put() made
        number = step + 1
        finite = number not in self.poisoned and not (self.halted and not self.dynamic_loss_scale)
        if finite:
            self.applied.append(number)
        else:
            self.overflows += 1
            self.halted = True
        self.events.append(("step", number))
        if self.on_step is not None:
            self.on_step(number)
        return DeviceValue({"loss": 1.0 / number if finite else math.nan, "top1": 0.5, "top5": 1.0,
                            "lr": 0.1, "finite": finite})

    def fetch(self, metrics):
        self.fetches.append(len(metrics))
        self.events.append(("fetch", len(metrics)))
        return [m._row for m in metrics]

    def overflow_steps(self):
        return self.overflows

    def save(self, step, meta):
        self.events.append(("save", step))
        self.saved.append((step, meta))

    def finish_saves(self):
        pass

    def complete_steps(self):
        return [step for step, _ in self.saved]

    def close(self):
        pass

    def eval_sums(self, dataset):
        return {"loss": 2.0 * dataset.num_examples, "top1": 0.25 * dataset.num_examples,
                "top5": 0.5 * dataset.num_examples, "count": float(dataset.num_examples)}


def config_for(**overrides):
    return tiny_train_config(**{"train.batch_size": BATCH, "train.log_every_steps": 4, **overrides})


def test_metrics_are_fetched_every_log_every_steps_and_at_epoch_ends(tmp_path):
    engine = FakeEngine()
    result = loop.train_and_evaluate(engine, config_for(), str(tmp_path))
    # 11 steps an epoch, logs every 4 steps of the run: 4, 8, 11 | 12, 16, 20, 22
    assert engine.fetches == [4, 4, 3, 1, 4, 4, 2]
    assert [e for e in engine.events if e[0] != "step"] == [("fetch", 4), ("fetch", 4), ("fetch", 3), ("save", 11),
                                                            ("fetch", 1), ("fetch", 4), ("fetch", 4), ("fetch", 2),
                                                            ("save", 22)]
    rows = metrics_lib.read_metrics(str(tmp_path))
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [4, 8, 11, 12, 16, 20, 22]
    assert train_rows[0]["loss"] == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4]))
    assert train_rows[2]["loss"] == pytest.approx(np.mean([1 / 9, 1 / 10, 1 / 11]))
    assert all(r["data_ms"] >= 0 and r["data_ms"] <= r["step_ms"] for r in train_rows)
    evals = [r for r in rows if r["split"] == "eval"]
    assert [(r["step"], r["loss"], r["top1"]) for r in evals] == [(11, 2.0, 0.25), (22, 2.0, 0.25)]
    assert result["count"] == 359 and result["top5"] == 0.5
    assert engine.saved[-1][1]["epoch"] == 2 and engine.saved[-1][1]["engine"] == "fake"


def test_a_non_finite_step_under_a_fixed_scale_stops_the_run_naming_it(tmp_path):
    """Step 6 is non-finite; the loop sees it at the fetch after step 8. Steps 7 and 8 were dispatched
    but not applied, and nothing is saved (the first checkpoint would have been step 11's)."""
    engine = FakeEngine(poisoned={6})
    with pytest.raises(NonFiniteLoss, match=r"^loss is nan at step 6 \(epoch 1\): the loss or gradients of this step "
                                            r"are not finite, so it was not applied and training stopped; no "
                                            r"checkpoint was written yet\. Lower optimizer\.learning_rate"):
        loop.train_and_evaluate(engine, config_for(), str(tmp_path))
    assert engine.applied == [1, 2, 3, 4, 5]
    assert [e for e in engine.events if e[0] == "step"][-1] == ("step", 8)  # the stop came at the next fetch
    assert engine.saved == []
    assert [r["step"] for r in metrics_lib.read_metrics(str(tmp_path))] == [4]  # no row from the bad window


def test_a_non_finite_step_after_a_checkpoint_names_the_intact_one(tmp_path):
    engine = FakeEngine(poisoned={13})
    with pytest.raises(NonFiniteLoss, match=r"at step 13 \(epoch 2\).*the newest checkpoint, step 11, is intact"):
        loop.train_and_evaluate(engine, config_for(), str(tmp_path))
    assert [step for step, _ in engine.saved] == [11]
    assert engine.applied == list(range(1, 13))


def test_a_dynamic_scale_only_counts_a_non_finite_step(tmp_path):
    engine = FakeEngine(poisoned={2}, dynamic=True)
    loop.train_and_evaluate(engine, config_for(**{"train.epochs": 1, "mixed_precision.loss_scale": 0.0}), str(tmp_path))
    rows = [r for r in metrics_lib.read_metrics(str(tmp_path)) if r["split"] == "train"]
    assert [(r["step"], r["overflow_steps"]) for r in rows] == [(4, 1), (8, 1), (11, 1)]
    assert rows[0]["loss"] == pytest.approx(np.mean([1, 1 / 3, 1 / 4]))  # a mean over the applied steps only


def test_a_signal_saves_the_current_step_and_returns(tmp_path, capsys):
    def terminate(step):
        if step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    engine = FakeEngine(on_step=terminate)
    assert loop.train_and_evaluate(engine, config_for(), str(tmp_path)) is None
    assert [step for step, _ in engine.saved] == [6] and engine.applied == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in metrics_lib.read_metrics(str(tmp_path))] == [4, 6]  # the stop writes its row
    assert "stopped at step 6; checkpoint saved, run again to resume" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


def test_on_device_keeps_two_batches_ahead_and_counts_the_wait():
    put, events = [], []
    wait = loop.InputWait()

    def host():
        for i in range(5):
            events.append(("read", i))
            yield i

    for batch in loop.on_device(lambda b: put.append(b) or b, host(), wait=wait):
        events.append(("step", batch))
    assert events[:4] == [("read", 0), ("read", 1), ("step", 0), ("read", 2)]  # batch 2 is read after step 0 starts
    assert [e for e in events if e[0] == "step"] == [("step", i) for i in range(5)] and put == list(range(5))
    assert wait.seconds >= 0 and wait.take() >= 0 and wait.seconds == 0


def test_a_slow_input_pipeline_is_named_on_the_epoch_line(tmp_path, capsys, monkeypatch):
    import time

    from mobilenets_core.data.dataset import Dataset

    real = Dataset.train_batches

    def slow(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            time.sleep(0.02)
            yield batch

    monkeypatch.setattr(Dataset, "train_batches", slow)
    loop.train_and_evaluate(FakeEngine(), config_for(**{"train.epochs": 1}), str(tmp_path))
    out = capsys.readouterr().out
    assert "input-bound: " in out and "% of the epoch waited for data" in out
    rows = [r for r in metrics_lib.read_metrics(str(tmp_path)) if r["split"] == "train"]
    # each read sleeps 20 ms; the last window (steps 9-11) reads batches 9 and 10 only: >= 40 / 3 ms a step
    assert [r["step"] for r in rows] == [4, 8, 11] and all(r["data_ms"] >= 13 for r in rows)
