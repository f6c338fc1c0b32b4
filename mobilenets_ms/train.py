"""Training and evaluation on MindSpore (Ascend, GPU or CPU), the JAX engine's loop step for step.

Same data (`mobilenets_core.data`, NHWC batches straight into the network), same learning rate
table (`mobilenets_core.schedules`, indexed by the step inside the compiled step), same loss
(mean softmax cross-entropy against onehot * (1 - ls) + ls / num_classes, as optax.smooth_labels),
same optimizers (`mobilenets_ms.optimizers`), same metrics, console lines and progress bar.

One compiled `TrainStep` Cell (graph mode by default) does forward, backward, loss scaling and
the overflow check, the update and the EMA. Data parallel runs the MindSpore way: one process per
device started by `msrun`, `mindspore.communication.init()`, gradients averaged by
`nn.DistributedGradReducer`; each rank reads its own rows of the global batch.
"""
from __future__ import annotations

import functools
import logging
import os

import mindspore as ms
import numpy as np
from mindspore import ParameterTuple, Tensor, nn, ops

from mobilenets_core import loop, schedules
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import preprocess
from mobilenets_core.weights import ModelInfo, reader
from mobilenets_core.weights.mindspore_ckpt import BN_EPS_TENSOR, CONVENTION_TENSOR, convention_tensor
from mobilenets_core.weights.tensors import MINDSPORE_BATCHNORM, compare
from mobilenets_ms import mixed_precision, models
from mobilenets_ms.checkpoints import Checkpoints
from mobilenets_ms.optimizers import build_optimizer
from mobilenets_ms.weights import load_canonical

DEVICES = ("Ascend", "GPU", "CPU")
MODES = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}
_context = {}  # what this process has set up: device, mode, distributed group
BATCHNORM_STATISTICS = (MINDSPORE_BATCHNORM["mean"], MINDSPORE_BATCHNORM["var"])


# ----------------------------------------------------------------------------- context


def select_device(requested: str = "auto") -> str:
    """The device target: `requested`, or for "auto" the first available of Ascend, GPU, CPU."""
    if requested != "auto" and requested not in DEVICES:
        raise ConfigError(f"mindspore.device={requested!r} is not one of auto, {', '.join(DEVICES)}")
    candidates = DEVICES if requested == "auto" else (requested,)
    logger = ms.log._get_logger()  # is_available warns about every plugin a CPU-only build lacks
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        for name in candidates:
            if ms.hal.is_available(name):
                return name
    finally:
        logger.setLevel(level)
    raise ConfigError(f"mindspore.device={requested!r}: MindSpore {ms.__version__} here has no {requested} backend; "
                      f"use mindspore.device=auto")


def setup(config) -> dict:
    """Device, execution mode and (under msrun) the communication group; once per process.

    Returns {"device", "rank", "group_size"}. The mode may change between calls (tests switch it);
    the device and the group are fixed by the first call."""
    mode = str(config.mindspore.mode)
    if mode not in MODES:
        raise ConfigError(f"mindspore.mode={mode!r} is not one of {', '.join(MODES)}")
    ms.set_context(mode=MODES[mode])
    if not _context:
        device = select_device(str(config.mindspore.device))
        try:
            ms.set_device(device)
        except RuntimeError:
            # An op already ran (mobilenets_ms's import primes the NumPy bridge) on the build's default
            # target; that is fine when it is the one we want.
            if ms.get_context("device_target") != device:
                raise ConfigError(f"mindspore.device selects {device}, but MindSpore already runs on "
                                  f"{ms.get_context('device_target')} in this process") from None
        rank, size = 0, 1
        if int(os.environ.get("MS_WORKER_NUM", os.environ.get("RANK_SIZE", "1"))) > 1:
            from mindspore import communication

            communication.init()
            rank, size = communication.get_rank(), communication.get_group_size()
            ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                         device_num=size)
        _context.update(device=device, rank=rank, group_size=size)
    return dict(_context)


# ----------------------------------------------------------------------------- steps


class Normalize(nn.Cell):
    """uint8 images -> float32 (x - mean) / std, on the device (`preprocess.normalize` on the host)."""

    def __init__(self):
        super().__init__()
        self.mean = Tensor(preprocess.NORMALIZE_MEAN)
        self.std = Tensor(preprocess.NORMALIZE_STD)

    def construct(self, images):
        return (images.astype(ms.float32) - self.mean) / self.std


@functools.lru_cache(maxsize=1)
def _normalize() -> Normalize:
    return Normalize()


def device_images(images: np.ndarray) -> Tensor:
    """The pipeline's uint8 images as a normalized float32 Tensor, normalized on the device: a quarter
    of the bytes cross over. Float images (bench, export, tests) are taken as they are."""
    if images.dtype != np.uint8:
        return Tensor(images)
    return _normalize()(Tensor(images))


def cross_entropy(logits, labels, num_classes: int, smoothing: float):
    """Per-example softmax cross-entropy against optax.smooth_labels targets."""
    onehot = ops.one_hot(labels, num_classes, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
    if smoothing:
        onehot = onehot * (1.0 - smoothing) + smoothing / num_classes
    return -(onehot * ops.log_softmax(logits, -1)).sum(-1)


def topk_correct(logits, labels, k: int):
    """Per-example 1.0 where the label is among the k largest logits."""
    _, top = ops.topk(logits, k)
    return (top == labels.reshape((-1, 1))).astype(ms.float32).sum(-1)


_unscale = ops.MultitypeFuncGraph("unscale")
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_unscale.register("Tensor", "Tensor")
def _unscale_one(scale, grad):
    return grad / scale


_keep_if = ops.MultitypeFuncGraph("keep_if")


@_keep_if.register("Tensor", "Tensor", "Tensor")
def _keep_if_one(finite, value, before):
    ops.assign(value, ops.where(finite, value, before))
    return finite


@_ema_update.register("Number", "Tensor", "Tensor", "Tensor")
def _ema_one(decay, apply, ema, param):
    ops.assign(ema, ops.where(apply, decay * ema + (1.0 - decay) * param, ema))
    return apply


class NetWithLoss(nn.Cell):
    """(loss * scale, loss, logits): the first output is differentiated, the others ride along.
    `keep`: the step's dropout (models.dropout_keep), None without dropout."""

    def __init__(self, net, num_classes: int, smoothing: float):
        super().__init__(auto_prefix=False)
        self.net = net
        self.num_classes = int(num_classes)
        self.smoothing = float(smoothing)

    def construct(self, images, labels, scale, keep=None):
        logits = self.net(images, keep).astype(ms.float32)
        loss = cross_entropy(logits, labels, self.num_classes, self.smoothing).mean()
        return loss * scale, loss, logits


class TrainStep(nn.Cell):
    """One update: (images, labels, step[, keep]) -> (loss, top1, top5, lr, finite); `keep`, the dropout
    of this step (models.dropout_keep), is given when the network has dropout."""

    def __init__(self, net, optimizer, loss_scale, num_classes: int, smoothing: float, ema_decay: float,
                 group_size: int = 1):
        super().__init__(auto_prefix=False)
        self.loss_net = NetWithLoss(net, num_classes, smoothing)
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        self.weights = optimizer.params
        self.grad_fn = ops.value_and_grad(self.loss_net, None, self.weights, has_aux=True)
        self.k5 = min(5, int(num_classes))
        self.hyper_map = ops.HyperMap()
        self.ema_decay = float(ema_decay)
        self.use_ema = self.ema_decay > 0
        if self.use_ema:
            self.ema = self.weights.clone(prefix="ema", init="same")
        self.group_size = int(group_size)
        self.distributed = self.group_size > 1
        if self.distributed:
            self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=self.group_size)
            self.all_reduce = ops.AllReduce()
        # BatchNorm updates its running statistics inside the forward pass; a skipped (non-finite)
        # step must not leave NaN in them, so they are restored from this copy.
        self.statistics = ParameterTuple([p for p in net.get_parameters() if not p.requires_grad
                                          and p.name.endswith(BATCHNORM_STATISTICS)])
        self.statistics_before = self.statistics.clone(prefix="statistics_before", init="same")

    def construct(self, images, labels, step, keep=None):
        unit = self.loss_scale.unit  # a fixed scale of 1: nothing to scale or unscale
        scale = 1.0 if unit else self.loss_scale.scale
        self.hyper_map(ops.assign, self.statistics_before, self.statistics)
        (_, loss, logits), grads = self.grad_fn(images, labels, scale, keep)
        if self.distributed:
            grads = self.reducer(grads)
        if not unit:
            grads = self.hyper_map(ops.partial(_unscale, scale), grads)
        finite = ops.logical_and(mixed_precision.all_finite(grads), ops.isfinite(loss))
        finite = self.loss_scale(finite)
        self.hyper_map(ops.partial(_keep_if, finite), self.statistics, self.statistics_before)
        lr = self.optimizer.lr_at(step)
        self.optimizer(grads, lr, finite)
        if self.use_ema:
            self.hyper_map(ops.partial(_ema_update, self.ema_decay, finite), self.ema, self.weights)
        top1 = topk_correct(logits, labels, 1).mean()
        top5 = topk_correct(logits, labels, self.k5).mean()
        stats = ops.stack((loss, top1, top5))
        if self.distributed:
            stats = self.all_reduce(stats) / self.group_size
        return stats, lr, finite


class AverageOverRanks(nn.Cell):
    """Set each of `parameters` to its mean over all ranks (one collective call)."""

    def __init__(self, parameters, group_size: int):
        super().__init__(auto_prefix=False)
        self.parameters = parameters
        self.group_size = float(group_size)
        self.all_reduce = ops.AllReduce()

    def construct(self):
        for p in self.parameters:
            ops.assign(p, self.all_reduce(p) / self.group_size)
        return self.group_size


class EvalStep(nn.Cell):
    """(images, labels, mask) -> sums over the real rows of (loss, top1, top5, count)."""

    def __init__(self, net, num_classes: int, group_size: int = 1):
        super().__init__(auto_prefix=False)
        self.net = net
        self.num_classes = int(num_classes)
        self.k5 = min(5, int(num_classes))
        self.distributed = group_size > 1
        if self.distributed:
            self.all_reduce = ops.AllReduce()

    def construct(self, images, labels, mask):
        logits = self.net(images).astype(ms.float32)
        m = mask.astype(ms.float32)
        loss = cross_entropy(logits, labels, self.num_classes, 0.0)
        sums = ops.stack(((loss * m).sum(), (topk_correct(logits, labels, 1) * m).sum(),
                          (topk_correct(logits, labels, self.k5) * m).sum(), m.sum()))
        if self.distributed:
            sums = self.all_reduce(sums)
        return sums


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """The network, optimizer and compiled steps for one config on this process's device."""

    def __init__(self, config, steps_per_epoch: int, *, context: dict | None = None, net=None):
        self.config = config
        self.context = context or setup(config)
        self.group_size = int(self.context["group_size"])
        for key, size in (("train.batch_size", config.train.batch_size), ("eval.batch_size", config.eval.batch_size)):
            if size % self.group_size:
                raise ConfigError(f"{key}={size} is not divisible by the {self.group_size} ranks; "
                                  f"use a multiple of {self.group_size}")
        self.num_classes = int(config.model.num_classes)
        self.net = net if net is not None else models.build_network(config.model, seed=int(config.train.seed))
        if config.init.freeze == "backbone":
            freeze_backbone(self.net)
        self.lr = schedules.lr_table(config, steps_per_epoch)
        self.optimizer = build_optimizer(self.net.trainable_params(), config, self.lr)
        self.loss_scale = mixed_precision.LossScale.from_config(config)
        level = str(config.mixed_precision.level)
        compute_net = mixed_precision.apply_level(self.net, level)
        self.ema_decay = float(config.ema.decay)
        self.train_step = TrainStep(compute_net, self.optimizer, self.loss_scale, self.num_classes,
                                    float(config.loss.label_smoothing), self.ema_decay, self.group_size)
        self.eval_step = EvalStep(compute_net, self.num_classes, self.group_size)
        self.step = 0

    # -- state

    def load_weights(self, state: dict) -> None:
        """Canonical tensors (a subset is fine: a re-initialised classifier is left out) into the network."""
        load_canonical(self.net, state, partial=True)
        if self.ema_decay > 0:  # the average starts at the loaded weights, not the random ones
            for param, ema in zip(self.optimizer.params, self.train_step.ema):
                ema.set_data(Tensor(param.asnumpy().copy()))

    def state_tensors(self) -> dict:
        """Everything a checkpoint holds, by name."""
        tensors = {p.name: p for p in self.net.get_parameters()}
        for p in self.optimizer.state_parameters():
            tensors[p.name] = p
        if self.ema_decay > 0:
            for p in self.train_step.ema:
                tensors[p.name] = p
        for p in self.loss_scale.parameters_to_save():
            tensors[p.name] = p
        tensors["step"] = Tensor(np.asarray(self.step, np.int64))
        # Lets init.weights / --mode=convert read this file as a network checkpoint with the right eps and convention.
        tensors[BN_EPS_TENSOR] = Tensor(np.asarray([self.net.bn_eps], np.float32))
        tensors[CONVENTION_TENSOR] = Tensor(convention_tensor(self.net.arch.convention))
        return tensors

    def load_state(self, tensors: dict, network_only: bool = False, source: str = "the checkpoint") -> None:
        """Inverse of `state_tensors` (from a checkpoint's {name: ndarray}); names every mismatch first.

        network_only: the network (and its EMA) without the optimizer and loss-scale state, for
        eval, predict and export, which then work whatever optimizer the config names."""
        targets = {name: p for name, p in self.state_tensors().items()
                   if name not in ("step", BN_EPS_TENSOR, CONVENTION_TENSOR)}
        if network_only:
            network = {p.name for p in self.net.get_parameters()}
            targets = {n: p for n, p in targets.items() if n in network or n.startswith("ema.")}
        mismatch = compare(tensors, {n: p.shape for n, p in targets.items()})  # what else it holds is not read
        missing, wrong = mismatch.missing + (["step"] if "step" not in tensors else []), mismatch.wrong
        if missing or wrong:
            model = self.config.model
            raise ConfigError(f"{source} does not fit {model.name} width={model.width} groups={model.groups} "
                              f"num_classes={model.num_classes} optimizer={self.config.optimizer.name} "
                              f"ema.decay={self.config.ema.decay}: missing {missing[:6]}, shape mismatch {wrong[:6]}; "
                              f"use the config it was trained with, or another --workdir")
        for name, param in targets.items():
            # np.array, not ascontiguousarray: it keeps 0-d tensors 0-d
            param.set_data(Tensor(np.array(tensors[name], dtype=ms.dtype_to_nptype(param.dtype), order="C")))
        self.step = int(np.asarray(tensors["step"]))

    # -- steps

    def step_inputs(self, step: int, rows: int) -> tuple:
        """What `TrainStep` takes after (images, labels) for update `step` on `rows` rows of this rank:
        the step, and the dropout's keep mask when the network has dropout. Both are functions of the
        step alone, so a run resumed at `step` goes on exactly as an uninterrupted one."""
        keep = models.dropout_keep(self.net.head.dropout, int(self.config.train.seed), step,
                                   int(self.context["rank"]), (int(rows), int(self.net.arch.num_features)))
        return (Tensor(step, ms.int32),) + (() if keep is None else (Tensor(keep),))

    def dispatch(self, images: Tensor, labels: Tensor):
        """Start update `self.step` on this rank's rows; returns its (stats, lr, finite) Tensors unread."""
        self.train_step.set_train(True)
        outputs = self.train_step(images, labels, *self.step_inputs(self.step, images.shape[0]))
        self.step += 1
        return outputs

    @staticmethod
    def fetch(outputs: list) -> list:
        """Host rows of `dispatch` results: loss, top1, top5, lr, finite."""
        rows = []
        for stats, lr, finite in outputs:
            loss, top1, top5 = (float(v) for v in stats.asnumpy())
            rows.append({"loss": loss, "top1": top1, "top5": top5, "lr": float(lr.asnumpy()),
                         "finite": bool(finite.asnumpy())})
        return rows

    def train_on(self, batch: dict) -> dict:
        """One update on this rank's rows of a global batch, waited for: loss, top1, top5, lr, finite."""
        return self.fetch([self.dispatch(device_images(batch["image"]), Tensor(batch["label"]))])[0]

    @property
    def overflow_steps(self) -> int:
        return int(self.loss_scale.overflow_steps.asnumpy())

    def _swap_in_ema(self):
        """Put the EMA weights into the network; returns the live weights to put back."""
        live = [p.asnumpy().copy() for p in self.optimizer.params]
        for p, e in zip(self.optimizer.params, self.train_step.ema):
            p.set_data(Tensor(e.asnumpy()))
        return live

    def synchronise_statistics(self) -> None:
        """Data parallel: BatchNorm's running statistics follow each rank's own rows, so before an
        eval or a checkpoint they are averaged over the ranks (all ranks must call this). Every rank
        then evaluates, and rank 0 saves, the same network."""
        if self.group_size > 1:
            if not hasattr(self, "_average_statistics"):
                self._average_statistics = AverageOverRanks(self.train_step.statistics, self.group_size)
            self._average_statistics()

    def eval_sums(self, dataset) -> dict:
        """Sums over every example of `dataset` exactly once (the last batch padded and masked)."""
        self.synchronise_statistics()
        live = self._swap_in_ema() if self.ema_decay > 0 else None
        self.eval_step.set_train(False)
        totals = None
        try:
            for batch in dataset.eval_batches(int(self.config.eval.batch_size)):
                sums = self.eval_step(device_images(batch["image"]), Tensor(batch["label"]), Tensor(batch["mask"]))
                totals = sums if totals is None else totals + sums  # added on the device, read once
        finally:
            if live is not None:
                for p, value in zip(self.optimizer.params, live):
                    p.set_data(Tensor(value))
            self.train_step.set_train(True)
        return dict(zip(("loss", "top1", "top5", "count"), totals.asnumpy().astype(np.float64).tolist()))

    def inference_net(self):
        """The eval-mode network with the weights to deploy (EMA when ema.decay > 0), float32."""
        if self.ema_decay > 0:
            self._swap_in_ema()
        self.net.set_train(False)
        return self.net


# ----------------------------------------------------------------------------- the engine


HEAD_PREFIXES = ("head.", "classifier.")  # what init.freeze=backbone leaves trainable (as the JAX engine)


def freeze_backbone(net) -> None:
    """Only the head conv and the classifier train; the body's BatchNorm normalises with its running
    statistics and does not update them, exactly as the JAX engine's frozen backbone."""
    for name, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d) and not name.startswith(HEAD_PREFIXES):
            cell.use_batch_statistics = False
    for param in net.get_parameters():
        if not param.name.startswith(HEAD_PREFIXES):
            param.requires_grad = False


class MsEngine(loop.EngineCheckpoints):
    """The MindSpore side of `mobilenets_core.loop.Engine`: a Trainer (compiled Cells) and .ckpt files."""

    name = "mindspore"

    def __init__(self, config, workdir: str, *, read_only: bool = False):
        self.config, self.workdir = config, workdir
        self.context = setup(config)
        ms.set_seed(int(config.train.seed))
        self.process_index, self.process_count = int(self.context["rank"]), int(self.context["group_size"])
        self.lead = self.process_index == 0
        self.read_only = read_only or not self.lead
        self.trainer = None

    def open_checkpoints(self) -> Checkpoints:
        return Checkpoints(self.workdir, keep=int(self.config.checkpoint.keep), read_only=self.read_only)

    def checkpoint_name(self, step: int) -> str:
        return self.checkpoints.path(step)

    def start(self, steps_per_epoch: int, step, say) -> int:
        config = self.config
        initial = reader.initial_weights(config, say)[1] if step is None and config.init.weights else None
        tensors = self.checkpoints.restore(step)[0] if step is not None else None  # the loop set its bn_eps
        self.trainer = Trainer(config, steps_per_epoch, context=self.context)
        if step is not None:
            self.trainer.load_state(tensors, source=f"checkpoint step {step} in {self.checkpoints.directory}")
        elif initial is not None:
            self.trainer.load_weights(initial)
        if self.lead:
            removed = self.checkpoints.remove_interrupted_saves()
            if removed:
                say(f"removed {', '.join(removed)} from {self.checkpoints.directory}: left by a save that was "
                    f"interrupted")
        return self.trainer.step

    def describe(self) -> str:
        scale = self.trainer.loss_scale
        return (f"{self.context['group_size']} {self.context['device']} device(s) with MindSpore {ms.__version__} "
                f"({'graph' if ms.get_context('mode') == ms.GRAPH_MODE else 'pynative'} mode, AMP "
                f"{self.config.mixed_precision.level}, loss scale "
                f"{'dynamic' if scale.dynamic else float(scale.scale.asnumpy())})")

    def put(self, local_batch: dict):
        return device_images(local_batch["image"]), Tensor(local_batch["label"])

    def train_step(self, batch, step: int):
        self.trainer.step = step
        return self.trainer.dispatch(*batch)

    def fetch(self, metrics: list) -> list:
        return self.trainer.fetch(metrics)

    def overflow_steps(self) -> int:
        return self.trainer.overflow_steps

    def save(self, step: int, meta: dict) -> None:
        self.trainer.synchronise_statistics()  # a collective: every rank, before rank 0 writes
        if self.lead:
            self.checkpoints.save(step, self.trainer.state_tensors(), meta)

    def finish_saves(self) -> None:  # saves are synchronous
        pass

    def complete_steps(self) -> list:
        return self.checkpoints.all_steps()

    def close(self) -> None:
        pass

    def eval_sums(self, dataset) -> dict:
        return self.trainer.eval_sums(dataset)

    def load_for_inference(self, step: int | None) -> dict:
        config = self.config.copy_and_resolve_references()  # bn_eps becomes the weights'
        if step is None:
            initial = reader.initial_weights(config, print if self.lead else (lambda *a: None))[1]
            self.trainer = Trainer(config, 1, context=self.context)
            self.trainer.load_weights(initial)  # the EMA starts at them too
            return {"epoch": None}
        tensors, meta = self.checkpoints.restore(step)
        ModelInfo.of_checkpoint(meta, config.model).adopt_into(config.model)  # the weights' eps and convention
        self.trainer = Trainer(config, 1, context=self.context)
        self.trainer.load_state(tensors, network_only=True, source=f"checkpoint step {step} in {self.checkpoint_dir}")
        return meta

    def logits_fn(self):
        net = self.trainer.inference_net()
        return lambda batch: net(Tensor(np.ascontiguousarray(batch, np.float32))).asnumpy()


def write_weights_workdir(config, out: str, state: dict, meta: dict) -> None:
    """--mode=convert's hook: a workdir whose step-0 checkpoint holds `state` (evaluate it, or train on)."""
    trainer = Trainer(config, 1)
    trainer.load_weights(state)
    Checkpoints(out, keep=int(config.checkpoint.keep)).save(0, trainer.state_tensors(), {**meta, "engine": "mindspore"})


# main.py's train, eval and predict modes (see mobilenets_core.loop: train_and_evaluate, evaluate, predict)
train_and_evaluate, evaluate, predict = loop.entry_points(MsEngine)
