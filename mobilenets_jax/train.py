"""Training and evaluation on any JAX backend, from one device to many hosts.

One `jax.jit` step over a `Mesh` with a single `data` axis: the batch is sharded over every
device of every host, the state is replicated, so BatchNorm statistics and gradients are those
of the global batch (XLA inserts the all-reduces). The state buffers are donated.

A step whose loss or gradients are not finite is never applied (see optimizers.LossScale): with a
dynamic loss scale it is skipped and counted (`overflow_steps` in metrics.jsonl); otherwise the
run stops at that step with `NonFiniteLoss`, leaving the checkpoints as they were.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mobilenets_core import metrics as metrics_lib
from mobilenets_core import resume_checks, schedules
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import build_dataset
from mobilenets_core.failures import NonFiniteLoss
from mobilenets_core.preemption import StopOnSignal  # noqa: F401 - also train.StopOnSignal
from mobilenets_jax import models
from mobilenets_jax.checkpoints import Checkpoints
from mobilenets_jax.optimizers import (LossScale, all_finite, build_optimizer, keep_opt_state_unless,
                                       keep_unless)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # a copy of params when ema.decay > 0, else an empty dict
    rng: jax.Array
    loss_scale: Any = None  # {"scale", "good_steps", "overflow_steps"}, see optimizers.LossScale


def check_batch_sizes(config) -> None:
    """Both global batch sizes must split evenly over every device of every host."""
    for key, size in (("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if size % jax.device_count():
            raise ConfigError(f"{key}={size} is not divisible by the {jax.device_count()} devices; "
                              f"use a multiple of {jax.device_count()}")


def initialize_distributed() -> None:
    """Join a multi-process run when launched as one (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID in the environment); a single process needs nothing."""
    if int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1 and not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))


def cross_entropy(logits, labels, num_classes: int, smoothing: float):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing) if smoothing else \
        jax.nn.one_hot(labels, num_classes)
    return optax.softmax_cross_entropy(logits, targets)


def topk_correct(logits, labels, k: int):
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


class Trainer:
    """The jitted steps for one config on the current devices."""

    def __init__(self, config, steps_per_epoch: int):
        self.config = config
        self.num_classes = int(config.model.num_classes)
        self.module = models.build_network(config.model, dtype=DTYPES[config.train.dtype],
                                           frozen_backbone=config.init.freeze == "backbone")
        self.lr = schedules.lr_table(config, steps_per_epoch)
        self.tx = build_optimizer(config, self.lr)
        self.loss_scale = LossScale(config)
        self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        check_batch_sizes(config)
        self.train_step = jax.jit(self._train_step, in_shardings=(self.replicated, self.batch_sharding),
                                  out_shardings=(self.replicated, self.replicated), donate_argnums=0)
        self.eval_step = jax.jit(self._eval_step, in_shardings=(self.replicated, self.batch_sharding),
                                 out_shardings=self.replicated)

    def init_state(self, seed: int, variables=None) -> TrainState:
        """Fresh state from `seed`, or from given Flax variables (imported weights)."""
        state = jax.jit(self._make_state, out_shardings=self.replicated)(jax.random.PRNGKey(seed), variables)
        # A program of its own, so that the (large) init program does not depend on these settings.
        ema, loss_scale = jax.jit(lambda params: (
            jax.tree_util.tree_map(jnp.copy, params) if self.config.ema.decay > 0 else {}, self.loss_scale.init()),
            out_shardings=self.replicated)(state.params)
        return state.replace(ema_params=ema, loss_scale=loss_scale)

    def abstract_state(self, seed: int) -> TrainState:
        """Shapes, dtypes and shardings of `init_state(seed)` without computing it: a restore target.
        The loss scale is concrete, for checkpoints written before it was part of the state."""
        shapes = jax.eval_shape(self._make_state, jax.random.PRNGKey(seed), None)
        shapes = shapes.replace(ema_params=shapes.params if self.config.ema.decay > 0 else {}, loss_scale={})
        abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated),
                                          shapes)
        return abstract.replace(loss_scale=jax.jit(self.loss_scale.init, out_shardings=self.replicated)())

    def _make_state(self, rng, variables):
        if variables is None:
            size = int(self.config.dataset.image_size)
            variables = self.module.init(rng, jnp.zeros((1, size, size, 3)), train=False)
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                          opt_state=self.tx.init(params), ema_params={}, rng=jax.random.fold_in(rng, 1))

    def _train_step(self, state: TrainState, batch):
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        scale = state.loss_scale["scale"]

        def loss_fn(params):
            logits, updates = self.module.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                                train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
            loss = cross_entropy(logits, batch["label"], self.num_classes, self.config.loss.label_smoothing).mean()
            return loss * scale, (loss, logits, updates["batch_stats"])

        (_, (loss, logits, batch_stats)), scaled_grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree_util.tree_map(lambda g: g / scale, scaled_grads)
        finite = all_finite(grads) & jnp.isfinite(loss)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if self.config.ema.decay > 0:
            d = self.config.ema.decay
            ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, ema, params)
        metrics = {"loss": loss, "top1": topk_correct(logits, batch["label"], 1).mean(),
                   "top5": topk_correct(logits, batch["label"], 5).mean(),
                   "lr": jnp.asarray(self.lr)[jnp.minimum(state.step, self.lr.shape[0] - 1)], "finite": finite}
        # A non-finite step changes nothing but the step number and the loss scale.
        new_state = state.replace(step=state.step + 1, params=keep_unless(finite, params, state.params),
                                  batch_stats=keep_unless(finite, batch_stats, state.batch_stats),
                                  opt_state=keep_opt_state_unless(finite, opt_state, state.opt_state),
                                  ema_params=keep_unless(finite, ema, state.ema_params),
                                  loss_scale=self.loss_scale.update(state.loss_scale, finite))
        return new_state, metrics

    def _eval_step(self, state: TrainState, batch):
        params = state.ema_params if self.config.ema.decay > 0 else state.params
        logits = self.module.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"], train=False)
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"], self.num_classes, 0.0)
        return {"loss": (loss * mask).sum(), "top1": (topk_correct(logits, batch["label"], 1) * mask).sum(),
                "top5": (topk_correct(logits, batch["label"], 5) * mask).sum(), "count": mask.sum()}

    def to_global(self, local_batch: dict) -> dict:
        """This host's rows -> one array sharded over all devices of all hosts."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for k, v in local_batch.items()}

    def evaluate(self, state: TrainState, dataset) -> dict:
        watch = metrics_lib.Stopwatch()
        totals = None
        for batch in dataset.eval_batches(self.config.eval.batch_size):
            out = self.eval_step(state, self.to_global(batch))
            totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
        totals = jax.tree_util.tree_map(float, jax.device_get(totals))
        count = totals["count"]
        if int(count) != dataset.num_examples:
            raise RuntimeError(f"evaluated {count} examples, the split has {dataset.num_examples}")
        return {"loss": totals["loss"] / count, "top1": totals["top1"] / count, "top5": totals["top5"] / count,
                "count": int(count), "images_per_sec": count / watch.lap()}


# ----------------------------------------------------------------------------- the loop


def _datasets(config):
    kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
    return build_dataset(config, "train", **kw), build_dataset(config, "validation", **kw)


def _meta(config, train_ds, epoch: int) -> dict:
    return {"model": {k: config.model[k] for k in ("name", "width", "groups", "num_classes", "bn_eps")},
            "dataset": train_ds.name, "class_names": list(train_ds.class_names), "epoch": epoch,
            "image_size": int(config.dataset.image_size)}


def _progress(total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, disable=None,
                file=sys.stderr)


def _imported_start(config, trainer: Trainer, steps_per_epoch: int, say):
    """(trainer, variables) starting from config.init.weights; the network takes the file's BatchNorm eps."""
    from mobilenets_jax.weights import initial_variables

    def fresh():  # only computed for a classifier that is re-initialised
        size = config.dataset.image_size
        return jax.device_get(trainer.module.init(jax.random.PRNGKey(int(config.train.seed)),
                                                  jnp.zeros((1, size, size, 3)), train=False))

    variables, bn_eps = initial_variables(config, trainer.module, fresh, say)
    if bn_eps != config.model.bn_eps:
        say(f"model.bn_eps={config.model.bn_eps} -> {bn_eps}, the epsilon the imported weights were trained with")
        config.model.bn_eps = bn_eps
        trainer = Trainer(config, steps_per_epoch)
    return trainer, variables


def _with_checkpoint_eps(config, trainer: Trainer, meta: dict, steps_per_epoch: int) -> Trainer:
    """The trainer for a restored checkpoint: one started from imported weights trained with another
    BatchNorm epsilon keeps that epsilon (config.model.bn_eps is set to it)."""
    bn_eps = (meta.get("model") or {}).get("bn_eps")
    if bn_eps is None or bn_eps == config.model.bn_eps:
        return trainer
    config.model.bn_eps = bn_eps
    return Trainer(config, steps_per_epoch)


def train_and_evaluate(config, workdir: str, stop=None) -> dict | None:
    """Train `config` in `workdir`, resuming from its newest checkpoint; returns the final eval result.

    `stop(step) -> bool`, checked after every step, ends the run early with a checkpoint at that
    step (returns None); a later call resumes there, at the same data position. SIGTERM and
    SIGINT do the same."""
    with StopOnSignal() as signals:
        return _train_and_evaluate(config, workdir,
                                   lambda step: signals.signal is not None or (stop is not None and stop(step)))


_model_fields = resume_checks.model_fields


def _train_and_evaluate(config, workdir: str, stop) -> dict | None:
    initialize_distributed()
    check_batch_sizes(config)
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    train_ds, val_ds = _datasets(config)
    batch = int(config.train.batch_size)
    steps_per_epoch = train_ds.steps_per_epoch(batch)
    total_steps = steps_per_epoch * int(config.train.epochs)
    trainer = Trainer(config, steps_per_epoch)
    checkpoints = Checkpoints(workdir, keep=int(config.checkpoint.keep))

    # Whatever can refuse the run (a checkpoint of another model, data or training state, unreadable
    # init.weights) is decided before the first write to the workdir.
    latest = checkpoints.latest_step()
    if latest is None and config.init.weights:
        trainer, variables = _imported_start(config, trainer, steps_per_epoch, say)
        state = trainer.init_state(int(config.train.seed), variables)
    elif latest is None:
        state = trainer.init_state(int(config.train.seed))
    else:
        meta = checkpoints.check_model(latest, _model_fields(config))
        resume_checks.check_same_data(checkpoints.directory, latest, meta, train_ds)
        state, meta = checkpoints.restore(latest, trainer.abstract_state(int(config.train.seed)))
        trainer = _with_checkpoint_eps(config, trainer, meta, steps_per_epoch)
        say(f"resumed from {checkpoints.directory}/{latest} (step {latest}, epoch {meta['epoch']})")
    start = int(state.step)
    writer = metrics_lib.MetricsWriter(workdir, enabled=lead)
    if lead:
        dropped = metrics_lib.truncate_after(workdir, start)
        if dropped:
            say(f"metrics.jsonl: dropped {dropped} line(s) written after step {start}, the step training resumes "
                f"from (the run was interrupted after them)")
        with open(os.path.join(workdir, "dataset.json"), "w") as f:
            json.dump({"name": train_ds.name, "class_names": train_ds.class_names,
                       "num_train": train_ds.num_examples, "num_validation": val_ds.num_examples}, f)
    say(f"training {config.model.name} width {config.model.width} on {train_ds.name} ({train_ds.num_examples} "
        f"train / {val_ds.num_examples} validation images) for {config.train.epochs} epochs x {steps_per_epoch} "
        f"steps of {batch} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es)")
    for note in train_ds.notes + val_ds.notes:
        say(note)

    result = None
    for epoch in range(start // steps_per_epoch, int(config.train.epochs)):
        first = start - epoch * steps_per_epoch if epoch == start // steps_per_epoch else 0
        epoch_watch, log_watch = metrics_lib.Stopwatch(), metrics_lib.Stopwatch()
        epoch_sums, log_sums, log_steps, finite_steps, epoch_overflows = None, None, 0, 0, 0
        bar = _progress(steps_per_epoch, first, f"epoch {epoch + 1}") if lead else None
        for local in train_ds.train_batches(batch, epoch=epoch, start_step=first):
            state, step_metrics = trainer.train_step(state, trainer.to_global(local))
            finite = bool(step_metrics.pop("finite"))
            step = int(state.step)
            if not finite and not trainer.loss_scale.dynamic:
                _stop_on_non_finite(step_metrics, step, epoch, checkpoints, writer, bar)
            epoch_overflows += not finite
            if finite:  # means are over the steps that were applied
                epoch_sums = step_metrics if epoch_sums is None else jax.tree_util.tree_map(jnp.add, epoch_sums,
                                                                                            step_metrics)
                log_sums = step_metrics if log_sums is None else jax.tree_util.tree_map(jnp.add, log_sums, step_metrics)
                finite_steps += 1
            log_steps += 1
            if bar is not None:
                bar.update(1)
            stopping = stop(step)
            if step % int(config.train.log_every_steps) == 0 or step % steps_per_epoch == 0 or stopping:
                seconds = log_watch.lap()
                means = {k: float(v) / finite_steps for k, v in jax.device_get(log_sums).items()} if log_sums else \
                    {k: float("nan") for k in ("loss", "top1", "top5")}
                means["lr"] = float(step_metrics["lr"])
                writer.write({"step": step, "epoch": epoch + 1, "split": "train", **means,
                              "images_per_sec": log_steps * batch / seconds, "step_ms": 1000 * seconds / log_steps,
                              "overflow_steps": int(state.loss_scale["overflow_steps"])})
                log_sums, log_steps, finite_steps = None, 0, 0
            if stopping:
                if bar is not None:
                    bar.close()
                checkpoints.save(step, state, _meta(config, train_ds, epoch + 1))
                checkpoints.close()
                writer.close()
                say(f"stopped at step {step}; checkpoint saved, run again to resume")
                return None
        if bar is not None:
            bar.close()
        epoch_seconds = epoch_watch.lap()
        steps_done = steps_per_epoch - first
        applied = steps_done - epoch_overflows
        avg_loss = float(epoch_sums["loss"]) / applied if epoch_sums is not None else float("nan")
        line = metrics_lib.epoch_line(epoch + 1, epoch_seconds, steps_done, avg_loss)
        if trainer.loss_scale.dynamic or trainer.loss_scale.initial != 1.0 or epoch_overflows:
            line += (f", overflow steps: {epoch_overflows} (run total "
                     f"{int(state.loss_scale['overflow_steps'])})")
        say(line)
        repaired = train_ds.take_report()
        if repaired:
            say(repaired)
        last = epoch + 1 == int(config.train.epochs)
        saved = (epoch + 1) % int(config.checkpoint.every_epochs) == 0 or last
        if saved:
            checkpoints.save(int(state.step), state, _meta(config, train_ds, epoch + 1))
        if (epoch + 1) % int(config.eval.every_epochs) == 0 or last:
            checkpoints.wait()  # TFDS reads racing Orbax's finalisation once lost a save; finish it first
            result = trainer.evaluate(state, val_ds)
            writer.write({"step": int(state.step), "epoch": epoch + 1, "split": "eval", "loss": result["loss"],
                          "top1": result["top1"], "top5": result["top5"], "lr": float(trainer.lr[min(
                              int(state.step), total_steps) - 1]), "images_per_sec": result["images_per_sec"],
                          "step_ms": 0.0})
            say(metrics_lib.eval_line(result, f"{checkpoints.directory}/{int(state.step)}" if saved
                                       else "(not saved this epoch)"))
            repaired = val_ds.take_report()
            if repaired:
                say(repaired)
        start = int(state.step)
    checkpoints.close()
    writer.close()
    if result is None:  # already finished before this call: report the final checkpoint
        result = evaluate(config, workdir)
    return result


def _stop_on_non_finite(step_metrics, step: int, epoch: int, checkpoints: Checkpoints, writer, bar):
    """Without a dynamic loss scale a non-finite step ends the run: the step was not applied, a save
    in flight is finished, nothing later is saved, and the message names the step."""
    if bar is not None:
        bar.close()
    writer.close()
    checkpoints.close()
    good = checkpoints.complete_steps()
    raise NonFiniteLoss(
        f"loss is {float(step_metrics['loss'])} at step {step} (epoch {epoch + 1}): the loss or gradients of this "
        f"step are not finite, so it was not applied and training stopped; "
        + (f"the newest checkpoint, step {good[-1]}, is intact" if good else "no checkpoint was written yet")
        + ". Lower optimizer.learning_rate or check the data, or set mixed_precision.loss_scale=0 to skip such "
          "steps with a dynamic loss scale")


def restore_for_inference(config, workdir: str):
    """(trainer, state, step, meta) of what --mode=eval/predict evaluates: checkpoint eval.checkpoint,
    else the newest of `workdir`, or, when the workdir has none, the weights of config.init.weights
    (step None; a file from either engine, timm, or another JAX workdir)."""
    checkpoints = Checkpoints(workdir, read_only=True)
    try:
        step = config.eval.checkpoint if config.eval.checkpoint is not None else checkpoints.latest_step()
        if step is None and not config.init.weights:
            raise ConfigError(f"no checkpoint in {checkpoints.directory}; train first (--mode=train), point "
                              f"--workdir at a training run, or name weights with --config.init.weights=FILE")
        if step is None:
            config = config.copy_and_resolve_references()
            trainer, variables = _imported_start(config, Trainer(config, 1), 1,
                                                 print if jax.process_index() == 0 else (lambda *a: None))
            return trainer, trainer.init_state(int(config.train.seed), variables), None, {"epoch": None}
        trainer = Trainer(config, 1)
        state, meta = checkpoints.restore(int(step), trainer.abstract_state(int(config.train.seed)),
                                          model=_model_fields(config))
        return _with_checkpoint_eps(config.copy_and_resolve_references(), trainer, meta, 1), state, int(step), meta
    finally:
        checkpoints.close()


def evaluate(config, workdir: str) -> dict:
    """Evaluate the validation split with what `restore_for_inference` finds: Loss, Top-1, Top-5
    over every example once."""
    initialize_distributed()
    trainer, state, step, meta = restore_for_inference(config, workdir)
    _, val_ds = _datasets(config)
    result = trainer.evaluate(state, val_ds)
    source = f"{Checkpoints(workdir, read_only=True).directory}/{step}" if step is not None else config.init.weights
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        metrics_lib.MetricsWriter(workdir, tensorboard=False).write(
            {"step": step or 0, "epoch": meta["epoch"], "split": "eval", "loss": result["loss"],
             "top1": result["top1"], "top5": result["top5"], "lr": 0.0, "images_per_sec": result["images_per_sec"],
             "step_ms": 0.0, "mode": "eval", "engine": "jax", "weights": source})
        print(metrics_lib.eval_line(result, source))
    return result


def predict(config, workdir: str) -> list:
    """Top-k classes of predict.inputs with what --mode=eval would evaluate (see `restore_for_inference`)."""
    from mobilenets_core import predict as predict_lib

    predict_lib.collect_inputs(config.predict.inputs)  # a bad input spec fails before any work
    trainer, state, _, _ = restore_for_inference(config, workdir)
    params = state.ema_params if config.ema.decay > 0 else state.params
    apply = jax.jit(lambda images: trainer.module.apply({"params": params, "batch_stats": state.batch_stats},
                                                        images, train=False))
    return predict_lib.run(config, workdir, lambda batch: np.asarray(apply(jnp.asarray(batch))))
