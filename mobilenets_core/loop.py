"""THE training loop, for both engines: resume, epochs and steps, the cadence of logs, checkpoints and
evaluations, stop on signal, the non-finite policy, metrics.jsonl rows and console lines; and the
eval and predict drivers. An engine supplies only what is its own, through `Engine`.

Asynchronous by design. Inside a step the loop reads nothing from the devices: the step count is
kept here, on the host, and each step's metrics stay on the devices until `Engine.fetch` brings a
window of them over, every `train.log_every_steps`, at the end of an epoch and before any save.
The next batches are put on the devices while the current step runs (`AHEAD` of them), and the
time the loop waited for the input pipeline is reported as `data_ms`.

A step whose loss or gradients are not finite is refused inside the compiled step. With a dynamic
loss scale it is only counted (`overflow_steps`). With a fixed scale it also halts the state, so
the steps dispatched after it before the next fetch are refused as well; the fetch then stops the
run naming that first step, before anything later is saved.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import numpy as np

from mobilenets_core import metrics as metrics_lib
from mobilenets_core import resume_checks, schedules
from mobilenets_core import workdir as workdir_lib
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import build_dataset
from mobilenets_core.failures import NonFiniteLoss, RunError
from mobilenets_core.loss_scale import LossScaleRule
from mobilenets_core.preemption import StopOnSignal
from mobilenets_core.weights import ModelInfo

AHEAD = 2  # batches on the devices before the step that needs them
INPUT_BOUND = 0.10  # the epoch line says so above this fraction of the epoch spent waiting for data
SPLIT_KEYS = ("loss", "top1", "top5")


class Engine(Protocol):
    """What the loop asks of an engine (mobilenets_jax.train.JaxEngine, mobilenets_ms.train.MsEngine).

    Nothing here may wait for a device except `fetch`, `overflow_steps`, `finish_saves` and
    `eval_sums`. Every process of a multi-process run makes the same calls in the same order."""

    name: str  # "jax" | "mindspore": in checkpoint meta and eval rows
    process_index: int  # this process, of process_count; process 0 writes metrics and messages
    process_count: int
    checkpoint_dir: str

    def latest_step(self) -> int | None: ...
    def checkpoint_meta(self, step: int) -> dict: ...
    def checkpoint_name(self, step: int) -> str: ...

    def start(self, steps_per_epoch: int, step: int | None, say: Callable) -> int:
        """Build the state: restored from checkpoint `step`, or (None) fresh or from init.weights.
        Returns the number of steps already done."""

    def describe(self) -> str:
        """Where the run trains, for the start-of-run line ("1 cpu device(s), 1 process(es)")."""

    def put(self, local_batch: dict) -> Any:
        """This process's rows of a global batch, sent to the devices (sharded as the step expects)."""

    def train_step(self, batch: Any, step: int) -> Any:
        """Dispatch update `step` (0-based) on a batch from `put`; returns its metrics, on the device."""

    def fetch(self, metrics: list) -> list:
        """Host copies of `train_step` results: dicts of loss, top1, top5, lr (floats), finite (bool)."""

    def overflow_steps(self) -> int:
        """Steps refused as non-finite over the whole run, as of the last dispatched step."""

    def save(self, step: int, meta: dict) -> None: ...
    def finish_saves(self) -> None: ...
    def complete_steps(self) -> list: ...
    def close(self) -> None: ...

    def eval_sums(self, dataset) -> dict:
        """Sums of loss, top1, top5 and count over every example of `dataset` (host floats)."""

    def load_for_inference(self, step: int | None) -> dict:
        """Load checkpoint `step` (its network and EMA only: any optimizer does) for eval, predict and
        export, or for step None config.init.weights; returns the checkpoint's meta."""

    def logits_fn(self) -> Callable[[np.ndarray], np.ndarray]: ...


class EngineCheckpoints:
    """The checkpoint side every engine shares; the engine's `open_checkpoints()` returns its store
    (with `directory`, `latest_step()`, `meta(step)`). The store opens on first use, after the data
    were found: a run refused for its dataset leaves no directory behind."""

    @functools.cached_property
    def checkpoints(self):
        return self.open_checkpoints()

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoints.directory

    def latest_step(self) -> int | None:
        return self.checkpoints.latest_step()

    def checkpoint_meta(self, step: int) -> dict:
        return self.checkpoints.meta(step)

    def abandon_saves(self) -> None:
        """Remove the files of a save in flight (a second signal ends the process without waiting). The
        writer's threads may still be adding files, so the removal repeats until nothing is left."""
        if "checkpoints" not in self.__dict__:  # never opened: nothing in flight
            return
        deadline = time.monotonic() + 2.0
        while self.checkpoints.remove_interrupted_saves() and time.monotonic() < deadline:
            time.sleep(0.1)


# ----------------------------------------------------------------------------- input


class InputWait:
    """Seconds the loop has waited for the input pipeline since the last `take`."""

    def __init__(self):
        self.seconds = 0.0

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def on_device(put: Callable, host_batches: Iterable, ahead: int = AHEAD, wait: InputWait | None = None):
    """Yield put(batch) for each host batch, with `ahead` batches already on the devices.

    The next host batch is read after the consumer has dispatched its step (the generator resumes
    then), so reading and transfer overlap the step on the devices."""
    source = iter(host_batches)
    queue = collections.deque()

    def fill():
        while len(queue) < ahead:
            started = time.perf_counter()
            batch = next(source, None)
            if wait is not None:
                wait.seconds += time.perf_counter() - started
            if batch is None:
                return
            queue.append(put(batch))

    fill()
    while queue:
        yield queue.popleft()
        fill()


def datasets(config, engine: Engine):
    """(train, validation) for this process; ConfigError when the classifier cannot hold their classes."""
    kw = dict(process_index=int(engine.process_index), process_count=int(engine.process_count))
    train_ds = build_dataset(config, "train", **kw)
    classes, heads = len(train_ds.class_names), int(config.model.num_classes)
    if classes > heads:
        raise ConfigError(f"dataset {train_ds.name!r} has {classes} classes ({', '.join(train_ds.class_names[:5])}"
                          f"{', ...' if classes > 5 else ''}); model.num_classes={heads} cannot hold them: set "
                          f"model.num_classes={classes}")
    return train_ds, build_dataset(config, "validation", **kw)


def checkpoint_meta(config, engine: Engine, train_ds, epoch: int) -> dict:
    """What a checkpoint says about itself: the network, the data it learned, its epoch."""
    return {"model": ModelInfo.from_config(config.model).as_dict(),
            "dataset": train_ds.name, "class_names": list(train_ds.class_names), "epoch": epoch,
            "image_size": int(config.dataset.image_size), "engine": engine.name}


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=None if enabled else True, file=sys.stderr)


class _Window:
    """Steps since the last reset (a log interval or an epoch): means over the applied ones."""

    def __init__(self):
        self.steps = self.applied = self.overflows = 0
        self.sums = dict.fromkeys(SPLIT_KEYS, 0.0)
        self.data_seconds = 0.0
        self.watch = metrics_lib.Stopwatch()

    def add(self, row: dict) -> None:
        self.steps += 1
        if row["finite"]:
            self.applied += 1
            for key in SPLIT_KEYS:
                self.sums[key] += row[key]
        else:
            self.overflows += 1

    def means(self) -> dict:
        return {k: (v / self.applied if self.applied else float("nan")) for k, v in self.sums.items()}


# ----------------------------------------------------------------------------- training


def train_and_evaluate(engine: Engine, config, workdir: str, stop=None) -> dict | None:
    """Train `config` in `workdir`, resuming from the engine's newest checkpoint; returns the final
    eval result. The workdir belongs to this run while it trains (mobilenets_core.workdir).

    `stop(step) -> bool`, checked after every step, ends the run early with a checkpoint at that
    step (returns None); a later call resumes there, at the same data position. SIGTERM and
    SIGINT do the same."""
    with StopOnSignal(getattr(engine, "abandon_saves", None)) as signals, contextlib.ExitStack() as held:
        return _Run(engine, config, workdir, lambda step: signals.signal is not None or (
            stop is not None and stop(step)), held).train()


class _Run:
    def __init__(self, engine: Engine, config, workdir: str, stop, held: contextlib.ExitStack):
        self.engine, self.config, self.workdir, self.stop, self.held = engine, config, workdir, stop, held
        self.lead = engine.process_index == 0
        self.say = print if self.lead else (lambda *a, **k: None)
        self.batch = int(config.train.batch_size)
        self.log_every = int(config.train.log_every_steps)
        self.loss_scale = LossScaleRule.from_config(config)  # the engines' compiled steps apply it

    def train(self) -> dict | None:
        config, engine, say = self.config, self.engine, self.say
        self.train_ds, self.val_ds = datasets(config, engine)
        spe = self.steps_per_epoch = self.train_ds.steps_per_epoch(self.batch)
        epochs = int(config.train.epochs)
        self.lr = schedules.lr_table(config, spe)

        # Whatever can refuse the run (another live run, another engine's run, a checkpoint of another
        # model, data, recipe or training state, one that cannot be read, unreadable init.weights) is
        # decided before the first write to the workdir.
        workdir_lib.allowed_changes(config)
        made = workdir_lib.check_writable(self.workdir)
        try:
            latest = engine.latest_step()
            workdir_lib.check_engine(self.workdir, engine.name, latest is not None)
            run = {"recipe": workdir_lib.recipe(config)}
            if latest is not None:
                meta = engine.checkpoint_meta(latest)
                resume_checks.check_same_model(engine.checkpoint_dir, latest, meta,
                                               ModelInfo.from_config(config.model))
                resume_checks.check_same_data(engine.checkpoint_dir, latest, meta, self.train_ds)
                run = workdir_lib.check_recipe(self.workdir, config, latest, say)
                ModelInfo.of_checkpoint(meta, config.model).adopt_into(config.model)  # imported weights' eps, convention
            if self.lead:
                self.held.enter_context(workdir_lib.training_lock(self.workdir))
            step = engine.start(spe, latest, say)
        except BaseException:
            engine.close()  # an open checkpoint store (Orbax's threads) would fail loudly at exit
            workdir_lib.remove_if_empty(made)  # a refused run leaves the workdir as it found it
            raise
        if latest is not None:
            say(f"resumed from {engine.checkpoint_name(latest)} (step {latest}, epoch {meta.get('epoch')})")
        self.writer = metrics_lib.MetricsWriter(self.workdir, enabled=self.lead)
        if self.lead:
            workdir_lib.write_run(self.workdir, engine.name, run)
            self._start_records(step)
        say(f"training {config.model.name} width {config.model.width} on {self.train_ds.name} "
            f"({self.train_ds.num_examples} train / {self.val_ds.num_examples} validation images) for {epochs} "
            f"epochs x {spe} steps of {self.batch} on {engine.describe()}")
        for note in self.train_ds.notes + self.val_ds.notes:
            say(note)

        result = None
        for epoch in range(step // spe, epochs):
            step = self._train_epoch(epoch, step)
            if step is None:
                return None
            last = epoch + 1 == epochs
            saved = (epoch + 1) % int(config.checkpoint.every_epochs) == 0 or last
            if saved:
                engine.save(step, checkpoint_meta(config, engine, self.train_ds, epoch + 1))
            if (epoch + 1) % int(config.eval.every_epochs) == 0 or last:
                engine.finish_saves()  # TFDS reads racing Orbax's finalisation once lost a save; finish it first
                result = evaluate_split(engine, self.val_ds)
                self.writer.write({"step": step, "epoch": epoch + 1, "split": "eval",
                                   **{k: result[k] for k in SPLIT_KEYS}, "lr": float(self.lr[min(step, len(
                                       self.lr)) - 1]), "images_per_sec": result["images_per_sec"], "step_ms": 0.0})
                say(metrics_lib.eval_line(result, engine.checkpoint_name(step) if saved else "(not saved this epoch)"))
                self._report_repairs(self.val_ds)
        engine.close()
        self.writer.close()
        if result is None:  # already finished before this call: report the final checkpoint
            result = evaluate(engine, config, self.workdir)
        return result

    def _start_records(self, step: int) -> None:
        from mobilenets_core.atomic_files import write_json

        dropped = metrics_lib.truncate_after(self.workdir, step)
        if dropped:
            self.say(f"metrics.jsonl: dropped {dropped} line(s) written after step {step}, the step training "
                     f"resumes from (the run was interrupted after them)")
        write_json(os.path.join(self.workdir, "dataset.json"),
                   {"name": self.train_ds.name, "class_names": self.train_ds.class_names,
                    "num_train": self.train_ds.num_examples, "num_validation": self.val_ds.num_examples})

    def _report_repairs(self, dataset) -> None:
        repaired = dataset.take_report()
        if repaired:
            self.say(repaired)

    def _train_epoch(self, epoch: int, step: int) -> int | None:
        """Steps of `epoch` from `step` on; returns the step count at its end, or None when stopped."""
        engine, spe = self.engine, self.steps_per_epoch
        first = step - epoch * spe
        epoch_window, log_window = _Window(), _Window()
        wait = InputWait()
        pending, window_start = [], step  # device metrics of the steps since the last fetch
        bar = _progress(spe, first, f"epoch {epoch + 1}", self.lead)
        host_batches = self.train_ds.train_batches(self.batch, epoch=epoch, start_step=first)
        for batch in on_device(engine.put, host_batches, wait=wait):
            pending.append(engine.train_step(batch, step))
            step += 1
            bar.update(1)
            stopping = self.stop(step)
            if step % self.log_every == 0 or step % spe == 0 or stopping:
                rows = engine.fetch(pending)
                self._check_finite(rows, window_start, epoch, bar)
                pending, window_start = [], step
                for row in rows:
                    log_window.add(row)
                    epoch_window.add(row)
                data_seconds = wait.take()
                epoch_window.data_seconds += data_seconds
                self._write_train_row(step, epoch, rows[-1], log_window, data_seconds)
                log_window = _Window()
            if stopping:
                bar.close()
                engine.save(step, checkpoint_meta(self.config, engine, self.train_ds, epoch + 1))
                engine.close()
                self.writer.close()
                self.say(f"stopped at step {step}; checkpoint saved, run again to resume")
                return None
        bar.close()
        self._epoch_line(epoch, epoch_window)
        self._report_repairs(self.train_ds)
        return step

    def _check_finite(self, rows: list, window_start: int, epoch: int, bar) -> None:
        """Without a dynamic loss scale a non-finite step ends the run: it was not applied, nor was any
        step after it; a save in flight is finished, nothing later is saved, the message names it."""
        if self.loss_scale.dynamic or all(row["finite"] for row in rows):
            return
        index = next(i for i, row in enumerate(rows) if not row["finite"])
        bar.close()
        self.writer.close()
        self.engine.close()
        good = self.engine.complete_steps()
        raise NonFiniteLoss(
            f"loss is {rows[index]['loss']} at step {window_start + index + 1} (epoch {epoch + 1}): the loss or "
            f"gradients of this step are not finite, so it was not applied and training stopped; "
            + (f"the newest checkpoint, step {good[-1]}, is intact" if good else "no checkpoint was written yet")
            + ". Lower optimizer.learning_rate or check the data, or set mixed_precision.loss_scale=0 to skip such "
              "steps with a dynamic loss scale")

    def _write_train_row(self, step: int, epoch: int, last: dict, window: _Window, data_seconds: float) -> None:
        seconds = window.watch.lap()
        self.writer.write({"step": step, "epoch": epoch + 1, "split": "train", **window.means(), "lr": last["lr"],
                           "images_per_sec": window.steps * self.batch / seconds,
                           "step_ms": 1000 * seconds / window.steps, "data_ms": 1000 * data_seconds / window.steps,
                           "overflow_steps": self.engine.overflow_steps()})

    def _epoch_line(self, epoch: int, window: _Window) -> None:
        seconds = window.watch.lap()
        line = metrics_lib.epoch_line(epoch + 1, seconds, window.steps, window.means()["loss"])
        if not self.loss_scale.unit or window.overflows:
            line += f", overflow steps: {window.overflows} (run total {self.engine.overflow_steps()})"
        if window.data_seconds > INPUT_BOUND * seconds:
            line += (f", input-bound: {100 * window.data_seconds / seconds:.0f}% of the epoch waited for data "
                     f"(more dataset workers or cores, or a faster source)")
        self.say(line)


# ----------------------------------------------------------------------------- eval and predict


def evaluate_split(engine: Engine, dataset) -> dict:
    """Loss, Top-1 and Top-5 over every example of `dataset` once (the last batch padded and masked)."""
    watch = metrics_lib.Stopwatch()
    sums = engine.eval_sums(dataset)
    count = sums["count"]
    if int(round(count)) != dataset.num_examples:
        raise RuntimeError(f"evaluated {count} examples, the split has {dataset.num_examples}")
    return {**{k: sums[k] / count for k in SPLIT_KEYS}, "count": int(round(count)),
            "images_per_sec": count / watch.lap()}


def inference_step(engine: Engine, config) -> int | None:
    """The checkpoint eval, predict and export use: eval.checkpoint, else the newest; None when the
    workdir has none and config.init.weights names the weights instead."""
    steps = engine.complete_steps()
    step = config.eval.checkpoint if config.eval.checkpoint is not None else (steps[-1] if steps else None)
    if step is None and not config.init.weights:
        workdir = os.path.dirname(engine.checkpoint_dir)
        owner = workdir_lib.owner_engine(workdir)
        if owner is not None and owner != engine.name:
            raise ConfigError(f"no checkpoint in {engine.checkpoint_dir}: {workdir} holds a {owner} run; add "
                              f"--backend={owner}, or read its weights with this engine: "
                              f"--config.init.weights={workdir}")
        raise ConfigError(f"no checkpoint in {engine.checkpoint_dir}; train first (--mode=train --backend="
                          f"{engine.name}), point --workdir at a training run, or name weights with "
                          f"--config.init.weights=FILE")
    if step is not None and int(step) not in steps:
        raise ConfigError(f"eval.checkpoint={step} is not a checkpoint in {engine.checkpoint_dir}; "
                          f"available steps: {steps}")
    return None if step is None else int(step)


def load_for_inference(engine: Engine, config) -> tuple[int | None, dict]:
    """(step or None, meta) of what eval, predict and export use, loaded into `engine`; a checkpoint
    of another network is refused by its meta first."""
    step = inference_step(engine, config)
    if step is not None:
        meta = engine.checkpoint_meta(step)
        resume_checks.check_same_model(engine.checkpoint_dir, step, meta, ModelInfo.from_config(config.model))
        size = int(config.eval.image_size or meta.get("image_size") or config.dataset.image_size)
        if size != int(config.dataset.image_size):  # images as the checkpoint saw them, unless told otherwise
            if engine.process_index == 0:
                print(f"images at {size} px: " + ("eval.image_size" if config.eval.image_size else
                                                  f"the size checkpoint {step} was trained at (set "
                                                  f"eval.image_size for another)")
                      + f", not dataset.image_size={config.dataset.image_size}")
            config.dataset.image_size = size
    return step, engine.load_for_inference(step)


def evaluate(engine: Engine, config, workdir: str) -> dict:
    """--mode=eval: what `inference_step` names, on the whole validation split; one eval row
    (mode "eval") in metrics.jsonl and the seeds' result line."""
    step, meta = load_for_inference(engine, config)
    val_ds = build_dataset(config, "validation", process_index=int(engine.process_index),
                           process_count=int(engine.process_count))
    result = evaluate_split(engine, val_ds)
    source = engine.checkpoint_name(step) if step is not None else config.init.weights
    if engine.process_index == 0:
        print(metrics_lib.eval_line(result, source))
        try:  # the result is printed first: a read-only workdir still shows it
            os.makedirs(workdir, exist_ok=True)
            metrics_lib.MetricsWriter(workdir, tensorboard=False).write(
                {"step": step or 0, "epoch": meta.get("epoch"), "split": "eval", **{k: result[k] for k in SPLIT_KEYS},
                 "lr": 0.0, "images_per_sec": result["images_per_sec"], "step_ms": 0.0, "mode": "eval",
                 "engine": engine.name, "weights": source})
        except (OSError, RunError) as e:
            cause = e if isinstance(e, OSError) else e.__cause__
            print(f"(not recorded in {os.path.join(workdir, metrics_lib.METRICS_FILE)}: "
                  f"{getattr(cause, 'strerror', None) or cause or e})")
    return result


def predict(engine: Engine, config, workdir: str) -> list:
    """--mode=predict: top-k classes of predict.inputs with what --mode=eval would evaluate."""
    from mobilenets_core import predict as predict_lib

    predict_lib.collect_inputs(config.predict.inputs)  # a bad input or output fails before any work
    predict_lib.check_output(config.predict.output)
    load_for_inference(engine, config)
    return predict_lib.run(config, workdir, engine.logits_fn())


def entry_points(make_engine: Callable) -> tuple:
    """An engine's (train_and_evaluate, evaluate, predict)(config, workdir), main.py's modes, over
    `make_engine(config, workdir, read_only=...)`."""

    def train(config, workdir: str, stop=None) -> dict | None:
        return train_and_evaluate(make_engine(config, workdir), config, workdir, stop)

    def evaluate_mode(config, workdir: str) -> dict:
        return evaluate(make_engine(config, workdir, read_only=True), config, workdir)

    def predict_mode(config, workdir: str) -> list:
        return predict(make_engine(config, workdir, read_only=True), config, workdir)

    return train, evaluate_mode, predict_mode

