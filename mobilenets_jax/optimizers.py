"""optax optimizers with the semantics the MindSpore engine reproduces exactly.

With g the gradient of the mean loss, wd the weight decay and lr[s] the schedule's table:
  L2 decay (momentum, rmsprop): g <- g + wd * w      (only kernels if decay_bn_and_bias=False)
  momentum: v <- momentum * v + g;  w <- w - lr * v   (nesterov: w <- w - lr * (g + momentum * v))
  rmsprop (TF / MindSpore): ms <- decay * ms + (1 - decay) * g^2   (ms starts at 1)
                            mom <- momentum * mom + lr * g / sqrt(ms + eps);  w <- w - mom
  adamw: optax.adamw, decoupled decay wd * lr * w, bias-corrected moments
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("momentum", "rmsprop", "adamw")


def decay_mask(params, decay_bn_and_bias: bool):
    """True for the leaves that get weight decay: all of them, or only conv / dense kernels."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: decay_bn_and_bias or getattr(path[-1], "key", None) == "kernel", params)


def build_optimizer(config, lr_table) -> optax.GradientTransformation:
    """The configured optimizer; with init.freeze=backbone only the head's parameters move."""
    tx = _optimizer(config, lr_table)
    if config.init.freeze == "backbone":
        from mobilenets_jax.models import HEAD_MODULES

        labels = lambda params: {k: jax.tree_util.tree_map(  # noqa: E731
            lambda _: "train" if k in HEAD_MODULES else "frozen", v) for k, v in params.items()}
        return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def _optimizer(config, lr_table) -> optax.GradientTransformation:
    o = config.optimizer
    table = jnp.asarray(lr_table, jnp.float32)
    schedule = lambda count: table[jnp.minimum(count, table.shape[0] - 1)]  # noqa: E731
    mask = lambda params: decay_mask(params, o.decay_bn_and_bias)  # noqa: E731
    if o.name == "adamw":
        return optax.adamw(schedule, b1=0.9, b2=0.999, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
    if o.name == "momentum":
        core = optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov)
    elif o.name == "rmsprop":
        core = optax.rmsprop(schedule, decay=o.decay, eps=o.eps, initial_scale=1.0, eps_in_sqrt=True,
                             momentum=o.momentum or None, nesterov=o.nesterov)
    else:
        raise ValueError(f"optimizer.name={o.name!r} is not known; choose one of {', '.join(OPTIMIZERS)}")
    if o.weight_decay:
        return optax.chain(optax.masked(optax.add_decayed_weights(o.weight_decay), mask), core)
    return core
