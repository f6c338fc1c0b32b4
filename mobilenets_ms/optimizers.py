"""Optimizers with exactly the update rules of mobilenets_jax/optimizers.py (optax), as one Cell.

MindSpore's built-ins differ from the JAX engine in ways that matter for "same recipe, same
numbers": nn.RMSProp starts the mean square at 0 (optax/TF: 1) and nn.Optimizer's weight decay
and dynamic learning rate follow their own conventions (the rate index is the optimizer's own
counter, which does not advance on a skipped overflow step). So the updates are written here,
with g the (unscaled, all-reduced) gradient, wd the weight decay and lr the rate of this step:

  L2 decay (momentum, rmsprop): g <- g + wd * w   (only conv / dense kernels, `*.weight`,
                                                   if optimizer.decay_bn_and_bias=False)
  momentum: v <- momentum * v + g;  w <- w - lr * v      (nesterov: w <- w - lr * (g + momentum * v))
  rmsprop:  ms <- decay * ms + (1 - decay) * g^2   (ms starts at 1)
            mom <- momentum * mom + lr * g / sqrt(ms + eps);  w <- w - mom
  adamw:    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  t <- t + 1   (b1, b2: optimizer.beta1 / beta2)
            w <- w - lr * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * w)   (decay masked)

Plain momentum runs as MindSpore's fused ApplyMomentum kernel (one per parameter); the other
rules are composed of elementwise ops.

`construct(grads, lr, apply)` leaves every parameter and every state untouched where `apply`
is False (an overflow step), without branching, so it runs the same in graph and PyNative mode.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

OPTIMIZERS = ("momentum", "rmsprop", "adamw")


def decays(name: str, decay_bn_and_bias: bool) -> bool:
    """True if the parameter named `name` gets weight decay: all, or only conv / dense kernels.

    Kernels are the `.weight` of every conv (blocks, SE reduce/expand, head conv) and of the
    classifier; BatchNorm's gamma / beta and every bias are not."""
    return bool(decay_bn_and_bias) or name.endswith(".weight")


def lr_lookup(table: Tensor, step: Tensor) -> Tensor:
    """The rate of update `step` (0-based) from the schedule table, clamped at its end like the JAX engine."""
    index = ops.minimum(step, table.shape[0] - 1)
    return ops.gather(table, index, 0)


_momentum_update = ops.MultitypeFuncGraph("momentum_update")
_nesterov_update = ops.MultitypeFuncGraph("nesterov_update")
_rmsprop_update = ops.MultitypeFuncGraph("rmsprop_update")
_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_momentum_update.register("Function", "Tensor", "Tensor", "Tensor", "Number", "Tensor", "Tensor", "Tensor")
def _momentum_one(apply_momentum, lr, momentum, apply, wd, grad, param, moment):
    # One fused kernel per parameter: v <- momentum * v + g; w <- w - lr * v. A skipped step runs
    # it with g = 0, momentum = 1, lr = 0, which leaves v and w exactly as they were.
    g = grad + wd * param if wd else grad
    return apply_momentum(param, moment, lr, ops.where(apply, g, 0.0), momentum)


@_nesterov_update.register("Number", "Tensor", "Tensor", "Number", "Tensor", "Tensor", "Tensor")
def _nesterov_one(momentum, lr, apply, wd, grad, param, moment):
    # Composed: MindSpore 2.10's CPU ApplyMomentum(use_nesterov=True) is not this rule.
    g = grad + wd * param
    v = momentum * moment + g
    ops.assign(moment, ops.where(apply, v, moment))
    ops.assign(param, ops.where(apply, param - lr * (g + momentum * v), param))
    return apply


@_rmsprop_update.register("Number", "Bool", "Number", "Number", "Tensor", "Tensor", "Number", "Tensor", "Tensor",
                          "Tensor", "Tensor")
def _rmsprop_one(momentum, nesterov, decay, eps, lr, apply, wd, grad, param, mean_square, moment):
    g = grad + wd * param
    new_ms = decay * mean_square + (1.0 - decay) * ops.square(g)
    scaled = lr * (g / ops.sqrt(new_ms + eps))
    mom = momentum * moment + scaled
    step = scaled + momentum * mom if nesterov else mom
    ops.assign(moment, ops.where(apply, mom, moment))
    ops.assign(mean_square, ops.where(apply, new_ms, mean_square))
    ops.assign(param, ops.where(apply, param - step, param))
    return apply


@_adamw_update.register("Number", "Number", "Number", "Tensor", "Tensor", "Tensor", "Tensor", "Number", "Tensor",
                        "Tensor", "Tensor", "Tensor")
def _adamw_one(b1, b2, eps, correction1, correction2, lr, apply, wd, grad, param, mu, nu):
    new_mu = b1 * mu + (1.0 - b1) * grad
    new_nu = b2 * nu + (1.0 - b2) * ops.square(grad)
    update = (new_mu / correction1) / (ops.sqrt(new_nu / correction2) + eps) + wd * param
    ops.assign(mu, ops.where(apply, new_mu, mu))
    ops.assign(nu, ops.where(apply, new_nu, nu))
    ops.assign(param, ops.where(apply, param - lr * update, param))
    return apply


class Optimizer(nn.Cell):
    """One of momentum / rmsprop / adamw over `params` (a list of trainable Parameters).

    Momentum 0 is momentum with a zero trace (v = g), which is plain SGD exactly."""

    def __init__(self, params, config, lr_table):
        super().__init__()
        o = config.optimizer
        if o.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name={o.name!r} is not known; choose one of {', '.join(OPTIMIZERS)}")
        self.kind = str(o.name)
        self.params = ParameterTuple(params)
        self.lr_table = Tensor(np.asarray(lr_table, np.float32))
        self.momentum = float(o.momentum)
        self.nesterov = bool(o.nesterov)
        self.decay = float(o.decay)
        self.eps = float(o.eps)
        self.beta1, self.beta2 = float(o.beta1), float(o.beta2)
        self.weight_decay = float(o.weight_decay)
        # Per-parameter decay (0.0 where masked): g + 0.0 * w == g exactly, so no branch is needed.
        self.decay_values = tuple(self.weight_decay if decays(p.name, o.decay_bn_and_bias) else 0.0
                                  for p in params)
        self.decay_names = [p.name for p, d in zip(params, self.decay_values) if d]
        self.hyper_map = ops.HyperMap()
        if self.kind == "adamw":
            self.mu = self.params.clone(prefix="adam_m", init="zeros")
            self.nu = self.params.clone(prefix="adam_v", init="zeros")
            self.count = Parameter(Tensor(0, ms.int32), name="adam_count", requires_grad=False)
        else:
            if self.kind == "rmsprop":
                self.mean_square = self.params.clone(prefix="mean_square", init="ones")
            self.moments = self.params.clone(prefix="moments", init="zeros")
            self.apply_momentum = ops.ApplyMomentum()

    def lr_at(self, step: Tensor) -> Tensor:
        """Rates of the given update indices (any shape), with the lookup `construct`'s caller uses."""
        return lr_lookup(self.lr_table, step)

    def state_parameters(self) -> list:
        """Every state Parameter (for checkpoints), names prefixed by their role."""
        if self.kind == "adamw":
            return list(self.mu) + list(self.nu) + [self.count]
        return (list(self.mean_square) if self.kind == "rmsprop" else []) + list(self.moments)

    def construct(self, grads, lr, apply):
        if self.kind == "adamw":
            t = (self.count + 1).astype(ms.float32)
            correction1 = 1.0 - ops.pow(self.beta1, t)
            correction2 = 1.0 - ops.pow(self.beta2, t)
            done = self.hyper_map(ops.partial(_adamw_update, self.beta1, self.beta2, self.eps, correction1,
                                              correction2, lr, apply),
                                  self.decay_values, grads, self.params, self.mu, self.nu)
            ops.assign(self.count, ops.where(apply, self.count + 1, self.count))
            return done
        if self.kind == "rmsprop":
            return self.hyper_map(ops.partial(_rmsprop_update, self.momentum, self.nesterov, self.decay, self.eps,
                                              lr, apply), self.decay_values, grads, self.params, self.mean_square,
                                  self.moments)
        if self.nesterov:
            return self.hyper_map(ops.partial(_nesterov_update, self.momentum, lr, apply),
                                  self.decay_values, grads, self.params, self.moments)
        lr = ops.where(apply, lr, 0.0)
        momentum = ops.where(apply, Tensor(self.momentum, ms.float32), 1.0)
        return self.hyper_map(ops.partial(_momentum_update, self.apply_momentum, lr, momentum, apply),
                              self.decay_values, grads, self.params, self.moments)


def build_optimizer(params, config, lr_table) -> Optimizer:
    return Optimizer(list(params), config, lr_table)
