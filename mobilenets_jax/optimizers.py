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

from mobilenets_core.loss_scale import LossScaleRule

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
            lambda _, k=k: "train" if k in HEAD_MODULES else "frozen", v) for k, v in params.items()}
        return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def lr_schedule(lr_table):
    """optax schedule: the rate of update `count` (0-based) from the table of mobilenets_core.schedules,
    held at its last value past the end (the MindSpore engine's `lr_lookup` is the same)."""
    table = jnp.asarray(lr_table, jnp.float32)
    return lambda count: table[jnp.minimum(count, table.shape[0] - 1)]


def _optimizer(config, lr_table) -> optax.GradientTransformation:
    o = config.optimizer
    schedule = lr_schedule(lr_table)
    mask = lambda params: decay_mask(params, o.decay_bn_and_bias)  # noqa: E731
    if o.name == "adamw":
        return optax.adamw(schedule, b1=o.beta1, b2=o.beta2, eps=o.eps, weight_decay=o.weight_decay, mask=mask)
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


# ----------------------------------------------------------------------------- loss scale and skipped steps


class LossScale(LossScaleRule):
    """`mobilenets_core.loss_scale`'s rule in JAX (`LossScale.from_config`); its running state is a
    small dict inside the TrainState."""

    def init(self) -> dict:
        return {"scale": jnp.asarray(self.initial, jnp.float32), "good_steps": jnp.zeros((), jnp.int32),
                "overflow_steps": jnp.zeros((), jnp.int32)}

    def admits(self, state: dict, finite):
        """Whether a step is applied: its numbers are finite and, under a fixed scale, no earlier step's
        were (good_steps = -1 marks that state halted), so the steps dispatched after a non-finite one
        before the loop sees it change nothing either."""
        return finite if self.dynamic else finite & (state["good_steps"] >= 0)

    def update(self, state: dict, finite) -> dict:
        """The state after a step that was applied (finite) or refused."""
        overflow_steps = state["overflow_steps"] + jnp.where(finite, 0, 1).astype(jnp.int32)
        if not self.dynamic:
            return {**state, "overflow_steps": overflow_steps,
                    "good_steps": jnp.where(finite, state["good_steps"], -1).astype(jnp.int32)}
        good = state["good_steps"] + 1
        grow = good >= self.window
        grown = jnp.where(grow, state["scale"] * self.factor, state["scale"])
        shrunk = jnp.maximum(state["scale"] / self.factor, 1.0)
        return {"scale": jnp.where(finite, grown, shrunk).astype(jnp.float32),
                "good_steps": jnp.where(finite & ~grow, good, 0).astype(jnp.int32),
                "overflow_steps": overflow_steps}


def all_finite(tree) -> jax.Array:
    """True when every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def keep_unless(finite, new, old):
    """`new` where `finite`, else `old`, leaf by leaf (no branch: the same program either way)."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)


def keep_opt_state_unless(finite, new, old):
    """Like `keep_unless` for an optax state, except that learning-rate schedule counters always
    advance: the rate index is the step number, skipped steps included (as in the MindSpore engine)."""
    is_schedule = lambda node: isinstance(node, optax.ScaleByScheduleState)  # noqa: E731
    return jax.tree_util.tree_map(lambda n, o: n if is_schedule(n) else keep_unless(finite, n, o), new, old,
                                  is_leaf=is_schedule)
