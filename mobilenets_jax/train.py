"""The JAX engine of the training loop (mobilenets_core.loop): jitted steps on any JAX backend,
from one device to many hosts, and `JaxEngine`, what the loop drives.

One `jax.jit` step over a `Mesh` with a single `data` axis: the batch is sharded over every
device of every host, the state is replicated, so BatchNorm statistics and gradients are those
of the global batch (XLA inserts the all-reduces). The state buffers are donated.

A step whose loss or gradients are not finite is never applied (see optimizers.LossScale): with a
dynamic loss scale it is skipped and counted (`overflow_steps` in metrics.jsonl); otherwise the
state halts (later steps are refused too) and the loop stops the run naming that step, leaving
the checkpoints as they were.
"""
from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mobilenets_core import loop, schedules
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import preprocess
from mobilenets_core.weights import ModelInfo, flax_tree, reader
from mobilenets_core.weights.identity import TRAINED_FIELDS
from mobilenets_jax import models
from mobilenets_jax.checkpoints import Checkpoints
from mobilenets_jax.optimizers import LossScale, all_finite, build_optimizer, keep_opt_state_unless, keep_unless

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
        self.loss_scale = LossScale.from_config(config)
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
            logits, updates = self.module.apply({"params": params, "batch_stats": state.batch_stats},
                                                device_images(batch["image"]), train=True,
                                                mutable=["batch_stats"], rngs={"dropout": dropout_rng})
            loss = cross_entropy(logits, batch["label"], self.num_classes, self.config.loss.label_smoothing).mean()
            return loss * scale, (loss, logits, updates["batch_stats"])

        (_, (loss, logits, batch_stats)), scaled_grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.tree_util.tree_map(lambda g: g / scale, scaled_grads)
        finite = self.loss_scale.admits(state.loss_scale, all_finite(grads) & jnp.isfinite(loss))
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
        logits = self.module.apply({"params": params, "batch_stats": state.batch_stats},
                                   device_images(batch["image"]), train=False)
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"], self.num_classes, 0.0)
        return {"loss": (loss * mask).sum(), "top1": (topk_correct(logits, batch["label"], 1) * mask).sum(),
                "top5": (topk_correct(logits, batch["label"], 5) * mask).sum(), "count": mask.sum()}

    def to_global(self, local_batch: dict) -> dict:
        """This host's rows -> one array sharded over all devices of all hosts."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for k, v in local_batch.items()}


# ----------------------------------------------------------------------------- the engine


def device_images(images):
    """The pipeline's uint8 images normalized on the device (as `preprocess.normalize` does on the host:
    a quarter of the bytes cross to the device); float images (bench, export) are already normalized."""
    if images.dtype != jnp.uint8:
        return images
    return (images.astype(jnp.float32) - jnp.asarray(preprocess.NORMALIZE_MEAN)) / jnp.asarray(preprocess.NORMALIZE_STD)


def _imported_start(config, trainer: Trainer, steps_per_epoch: int, say):
    """(trainer, variables) starting from config.init.weights: the file's tensors where they fit, fresh
    ones for a classifier of another class count; the network takes the file's BatchNorm epsilon and
    architecture convention."""
    trained_as = [config.model.get(field) for field in TRAINED_FIELDS]
    _, fitted, reinit = reader.initial_weights(config, say)
    if [config.model.get(field) for field in TRAINED_FIELDS] != trained_as:
        trainer = Trainer(config, steps_per_epoch)  # the network the weights were trained as
    arch = trainer.module.arch
    if reinit:  # only then is the fresh network computed
        size = config.dataset.image_size
        fresh = trainer.module.init(jax.random.PRNGKey(int(config.train.seed)), jnp.zeros((1, size, size, 3)),
                                    train=False)
        fitted = {**fitted, **{n: v for n, v in flax_tree.to_canonical(jax.device_get(fresh), arch).items()
                               if n in reinit}}
    return trainer, flax_tree.from_canonical(fitted, arch)


class JaxEngine(loop.EngineCheckpoints):
    """The JAX side of `mobilenets_core.loop.Engine`: a Trainer, its TrainState, Orbax checkpoints."""

    name = "jax"

    def __init__(self, config, workdir: str, *, read_only: bool = False):
        initialize_distributed()
        check_batch_sizes(config)
        self.config, self.workdir, self.read_only = config, workdir, read_only
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        self.trainer = self.state = None

    def open_checkpoints(self) -> Checkpoints:
        return Checkpoints(self.workdir, keep=int(self.config.checkpoint.keep), read_only=self.read_only)

    def checkpoint_name(self, step: int) -> str:
        return f"{self.checkpoints.directory}/{step}"

    def start(self, steps_per_epoch: int, step, say) -> int:
        seed = int(self.config.train.seed)
        trainer = Trainer(self.config, steps_per_epoch)
        if step is None and self.config.init.weights:
            trainer, variables = _imported_start(self.config, trainer, steps_per_epoch, say)
            state = trainer.init_state(seed, variables)
        elif step is None:
            state = trainer.init_state(seed)
        else:
            state, _ = self.checkpoints.restore(step, trainer.abstract_state(seed))  # the loop set its bn_eps
        self.trainer, self.state = trainer, state
        return int(state.step)  # once, before the first step

    def describe(self) -> str:
        return f"{jax.device_count()} {jax.devices()[0].platform} device(s), {jax.process_count()} process(es)"

    def put(self, local_batch: dict):
        return self.trainer.to_global(local_batch)

    def train_step(self, batch, step: int):
        del step  # the state counts its own steps
        self.state, metrics = self.trainer.train_step(self.state, batch)
        return metrics

    def fetch(self, metrics: list) -> list:
        return [{k: (bool(v) if k == "finite" else float(v)) for k, v in row.items()}
                for row in jax.device_get(metrics)]

    def overflow_steps(self) -> int:
        return int(self.state.loss_scale["overflow_steps"])

    def save(self, step: int, meta: dict) -> None:
        self.checkpoints.save(step, self.state, meta)

    def finish_saves(self) -> None:
        self.checkpoints.wait()

    def complete_steps(self) -> list:
        return self.checkpoints.complete_steps()

    def close(self) -> None:
        self.checkpoints.close()

    def eval_sums(self, dataset) -> dict:
        totals = None
        for batch in loop.on_device(self.trainer.to_global, dataset.eval_batches(self.config.eval.batch_size)):
            out = self.trainer.eval_step(self.state, batch)
            totals = out if totals is None else jax.tree_util.tree_map(jnp.add, totals, out)
        return {k: float(v) for k, v in jax.device_get(totals).items()}

    def load_for_inference(self, step: int | None) -> dict:
        config = self.config.copy_and_resolve_references()  # bn_eps becomes the weights'
        seed = int(config.train.seed)
        if step is None:
            say = print if self.process_index == 0 else (lambda *a: None)
            self.trainer, variables = _imported_start(config, Trainer(config, 1), 1, say)
            self.state = self.trainer.init_state(seed, variables)
            return {"epoch": None}
        ModelInfo.of_checkpoint(self.checkpoint_meta(step), config.model).adopt_into(config.model)
        self.trainer = Trainer(config, 1)
        self.state, meta = self.checkpoints.restore(step, self.trainer.abstract_state(seed))
        return meta

    def inference_variables(self) -> dict:
        """The loaded weights to evaluate and deploy (EMA when ema.decay > 0), where they are."""
        params = self.state.ema_params if self.config.ema.decay > 0 else self.state.params
        return {"params": params, "batch_stats": self.state.batch_stats}

    def logits_fn(self):
        module, variables = self.trainer.module, self.inference_variables()
        apply = jax.jit(lambda images: module.apply(variables, images, train=False))
        return lambda batch: np.asarray(apply(jnp.asarray(batch)))


def write_weights_workdir(config, out: str, state: dict, meta: dict) -> None:
    """--mode=convert's hook: a workdir whose step-0 checkpoint holds `state` (evaluate it, or train on)."""
    trainer = Trainer(config, 1)
    checkpoints = Checkpoints(out, keep=int(config.checkpoint.keep))
    try:
        variables = flax_tree.from_canonical(state, trainer.module.arch)
        checkpoints.save(0, trainer.init_state(int(config.train.seed), variables), {**meta, "engine": "jax"})
    finally:
        checkpoints.close()


# main.py's train, eval and predict modes (see mobilenets_core.loop: train_and_evaluate, evaluate, predict)
train_and_evaluate, evaluate, predict = loop.entry_points(JaxEngine)
