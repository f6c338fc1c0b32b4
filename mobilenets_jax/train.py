"""Training and evaluation on any JAX backend, from one device to many hosts.

One `jax.jit` step over a `Mesh` with a single `data` axis: the batch is sharded over every
device of every host, the state is replicated, so BatchNorm statistics and gradients are those
of the global batch (XLA inserts the all-reduces). The state buffers are donated.
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
from mobilenets_core import schedules
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import build_dataset
from mobilenets_jax import models
from mobilenets_jax.checkpoints import Checkpoints
from mobilenets_jax.optimizers import build_optimizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # a copy of params when ema.decay > 0, else an empty dict
    rng: jax.Array


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
        self.mesh = Mesh(np.asarray(jax.devices()), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P("data"))
        for key, size in (("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)):
            if size % jax.device_count():
                raise ConfigError(f"{key}={size} is not divisible by the {jax.device_count()} devices; "
                                  f"use a multiple of {jax.device_count()}")
        self.train_step = jax.jit(self._train_step, in_shardings=(self.replicated, self.batch_sharding),
                                  out_shardings=(self.replicated, self.replicated), donate_argnums=0)
        self.eval_step = jax.jit(self._eval_step, in_shardings=(self.replicated, self.batch_sharding),
                                 out_shardings=self.replicated)

    def init_state(self, seed: int, variables=None) -> TrainState:
        """Fresh state from `seed`, or from given Flax variables (imported weights)."""
        size = int(self.config.dataset.image_size)

        def make(rng, variables):
            if variables is None:
                variables = self.module.init(rng, jnp.zeros((1, size, size, 3)), train=False)
            params = variables["params"]
            ema = jax.tree_util.tree_map(jnp.copy, params) if self.config.ema.decay > 0 else {}
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                              opt_state=self.tx.init(params), ema_params=ema, rng=jax.random.fold_in(rng, 1))

        return jax.jit(make, out_shardings=self.replicated)(jax.random.PRNGKey(seed), variables)

    def _train_step(self, state: TrainState, batch):
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits, updates = self.module.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                                                train=True, mutable=["batch_stats"], rngs={"dropout": dropout_rng})
            loss = cross_entropy(logits, batch["label"], self.num_classes, self.config.loss.label_smoothing).mean()
            return loss, (logits, updates["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if self.config.ema.decay > 0:
            d = self.config.ema.decay
            ema = jax.tree_util.tree_map(lambda e, p: d * e + (1 - d) * p, ema, params)
        metrics = {"loss": loss, "top1": topk_correct(logits, batch["label"], 1).mean(),
                   "top5": topk_correct(logits, batch["label"], 5).mean(),
                   "lr": jnp.asarray(self.lr)[jnp.minimum(state.step, self.lr.shape[0] - 1)]}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, ema_params=ema)
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

    fresh = jax.device_get(trainer.module.init(jax.random.PRNGKey(int(config.train.seed)), jnp.zeros(
        (1, config.dataset.image_size, config.dataset.image_size, 3)), train=False))
    variables, bn_eps = initial_variables(config, trainer.module, fresh, say)
    if bn_eps != config.model.bn_eps:
        say(f"model.bn_eps={config.model.bn_eps} -> {bn_eps}, the epsilon the imported weights were trained with")
        config.model.bn_eps = bn_eps
        trainer = Trainer(config, steps_per_epoch)
    return trainer, variables


class StopOnSignal:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) ask the loop to checkpoint the current step and return."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal = signum

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def train_and_evaluate(config, workdir: str, stop=None) -> dict | None:
    """Train `config` in `workdir`, resuming from its newest checkpoint; returns the final eval result.

    `stop(step) -> bool`, checked after every step, ends the run early with a checkpoint at that
    step (returns None); a later call resumes there, at the same data position. SIGTERM and
    SIGINT do the same."""
    with StopOnSignal() as signals:
        return _train_and_evaluate(config, workdir,
                                   lambda step: signals.signal is not None or (stop is not None and stop(step)))


def _train_and_evaluate(config, workdir: str, stop) -> dict | None:
    initialize_distributed()
    lead = jax.process_index() == 0
    say = print if lead else (lambda *a, **k: None)
    train_ds, val_ds = _datasets(config)
    batch = int(config.train.batch_size)
    steps_per_epoch = train_ds.steps_per_epoch(batch)
    total_steps = steps_per_epoch * int(config.train.epochs)
    trainer = Trainer(config, steps_per_epoch)
    checkpoints = Checkpoints(workdir, keep=int(config.checkpoint.keep))
    writer = metrics_lib.MetricsWriter(workdir, enabled=lead)
    if lead:
        with open(os.path.join(workdir, "dataset.json"), "w") as f:
            json.dump({"name": train_ds.name, "class_names": train_ds.class_names,
                       "num_train": train_ds.num_examples, "num_validation": val_ds.num_examples}, f)

    latest = checkpoints.latest_step()
    if latest is None and config.init.weights:
        trainer, variables = _imported_start(config, trainer, steps_per_epoch, say)
        state = trainer.init_state(int(config.train.seed), variables)
    else:
        state = trainer.init_state(int(config.train.seed))
    if latest is not None:
        state, meta = checkpoints.restore(latest, state)
        say(f"resumed from {checkpoints.directory}/{latest} (step {latest}, epoch {meta['epoch']})")
    start = int(state.step)
    say(f"training {config.model.name} width {config.model.width} on {train_ds.name} ({train_ds.num_examples} "
        f"train / {val_ds.num_examples} validation images) for {config.train.epochs} epochs x {steps_per_epoch} "
        f"steps of {batch} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es)")

    result = None
    for epoch in range(start // steps_per_epoch, int(config.train.epochs)):
        first = start - epoch * steps_per_epoch if epoch == start // steps_per_epoch else 0
        epoch_watch, log_watch = metrics_lib.Stopwatch(), metrics_lib.Stopwatch()
        epoch_sums, log_sums, log_steps = None, None, 0
        bar = _progress(steps_per_epoch, first, f"epoch {epoch + 1}") if lead else None
        for local in train_ds.train_batches(batch, epoch=epoch, start_step=first):
            state, step_metrics = trainer.train_step(state, trainer.to_global(local))
            epoch_sums = step_metrics if epoch_sums is None else jax.tree_util.tree_map(jnp.add, epoch_sums, step_metrics)
            log_sums = step_metrics if log_sums is None else jax.tree_util.tree_map(jnp.add, log_sums, step_metrics)
            log_steps += 1
            if bar is not None:
                bar.update(1)
            step = int(state.step)
            if stop(step):
                if bar is not None:
                    bar.close()
                checkpoints.save(step, state, _meta(config, train_ds, epoch + 1))
                checkpoints.close()
                writer.close()
                say(f"stopped at step {step}; checkpoint saved, run again to resume")
                return None
            if step % int(config.train.log_every_steps) == 0 or step % steps_per_epoch == 0:
                seconds = log_watch.lap()
                means = {k: float(v) / log_steps for k, v in jax.device_get(log_sums).items()}
                means["lr"] = float(step_metrics["lr"])
                writer.write({"step": step, "epoch": epoch + 1, "split": "train", **means,
                              "images_per_sec": log_steps * batch / seconds, "step_ms": 1000 * seconds / log_steps})
                if not np.isfinite(means["loss"]):
                    raise FloatingPointError(f"loss is {means['loss']} at step {step}; the last good checkpoint is "
                                             f"step {checkpoints.latest_step()}")
                log_sums, log_steps = None, 0
        if bar is not None:
            bar.close()
        epoch_seconds = epoch_watch.lap()
        steps_done = steps_per_epoch - first
        avg_loss = float(epoch_sums["loss"]) / steps_done if epoch_sums is not None else float("nan")
        say(metrics_lib.epoch_line(epoch + 1, epoch_seconds, steps_done, avg_loss))
        last = epoch + 1 == int(config.train.epochs)
        if (epoch + 1) % int(config.checkpoint.every_epochs) == 0 or last:
            checkpoints.save(int(state.step), state, _meta(config, train_ds, epoch + 1))
        if (epoch + 1) % int(config.eval.every_epochs) == 0 or last:
            checkpoints.wait()  # TFDS reads racing Orbax's finalisation once lost a save; finish it first
            result = trainer.evaluate(state, val_ds)
            writer.write({"step": int(state.step), "epoch": epoch + 1, "split": "eval", "loss": result["loss"],
                          "top1": result["top1"], "top5": result["top5"], "lr": float(trainer.lr[min(
                              int(state.step), total_steps) - 1]), "images_per_sec": result["images_per_sec"],
                          "step_ms": 0.0})
            say(metrics_lib.eval_line(result, f"{checkpoints.directory}/{int(state.step)}"))
        start = int(state.step)
    checkpoints.close()
    writer.close()
    if result is None:  # already finished before this call: report the final checkpoint
        result = evaluate(config, workdir)
    return result


def evaluate(config, workdir: str) -> dict:
    """Restore the newest checkpoint (or eval.checkpoint) of `workdir` and evaluate the validation split."""
    initialize_distributed()
    checkpoints = Checkpoints(workdir, read_only=True)
    step = config.eval.checkpoint if config.eval.checkpoint is not None else checkpoints.latest_step()
    if step is None:
        raise ConfigError(f"no checkpoint in {checkpoints.directory}; train first (--mode=train) or point "
                          f"--workdir at a training run")
    train_ds, val_ds = _datasets(config)
    trainer = Trainer(config, train_ds.steps_per_epoch(int(config.train.batch_size)))
    state, meta = checkpoints.restore(int(step), trainer.init_state(int(config.train.seed)))
    result = trainer.evaluate(state, val_ds)
    if jax.process_index() == 0:
        metrics_lib.MetricsWriter(workdir, tensorboard=False).write(
            {"step": int(step), "epoch": meta["epoch"], "split": "eval", "loss": result["loss"], "top1": result["top1"],
             "top5": result["top5"], "lr": 0.0, "images_per_sec": result["images_per_sec"], "step_ms": 0.0,
             "mode": "eval"})
        print(metrics_lib.eval_line(result, f"{checkpoints.directory}/{int(step)}"))
    checkpoints.close()
    return result


def predict(config, workdir: str) -> list:
    """Top-k classes of predict.inputs with the newest checkpoint (or eval.checkpoint) of `workdir`."""
    from mobilenets_core import predict as predict_lib

    predict_lib.collect_inputs(config.predict.inputs)  # a bad input spec fails before any work
    checkpoints = Checkpoints(workdir, read_only=True)
    step = config.eval.checkpoint if config.eval.checkpoint is not None else checkpoints.latest_step()
    if step is None:
        raise ConfigError(f"no checkpoint in {checkpoints.directory}; train first or point --workdir at a run")
    trainer = Trainer(config, 1)
    state, _ = checkpoints.restore(int(step), trainer.init_state(int(config.train.seed)))
    checkpoints.close()
    params = state.ema_params if config.ema.decay > 0 else state.params
    apply = jax.jit(lambda images: trainer.module.apply({"params": params, "batch_stats": state.batch_stats},
                                                        images, train=False))
    return predict_lib.run(config, workdir, lambda batch: np.asarray(apply(jnp.asarray(batch))))

