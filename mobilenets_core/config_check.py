"""Config checks shared by both engines: one-line errors naming the key and what is accepted."""
from __future__ import annotations

import difflib

from mobilenets_core import specs


class ConfigError(ValueError):
    """A user mistake in the config; the message says which key and what would be valid."""


def unknown_key_message(config, dotted: str) -> str | None:
    """If `dotted` (e.g. 'model.widht') names no field of `config`, a message listing the valid ones."""
    node, walked = config, []
    for part in dotted.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            where = ".".join(walked) or "the config"
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f" (did you mean {'.'.join(walked + close)}?)" if close else ""
            return (f"unknown config key {dotted!r}{hint}; valid keys in {where}: "
                    f"{', '.join(sorted(keys)) if keys else '(none: it is a value, not a section)'}")
        node, walked = node[part], walked + [part]
    return None


def check_model(model_cfg) -> None:
    """Raise ConfigError if model.* does not describe a network we can build."""
    try:
        specs.architecture_from_config(model_cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for key, low, high in (("dropout", 0.0, 1.0), ("bn_decay", 0.0, 1.0)):
        value = model_cfg[key]
        if not low <= value < high:
            raise ConfigError(f"model.{key}={value} must be in [{low}, {high})")
    if model_cfg.bn_eps <= 0:
        raise ConfigError(f"model.bn_eps={model_cfg.bn_eps} must be positive (1e-5 timm/MindSpore, 1e-3 TF)")


CHOICES = {
    "optimizer.name": ("momentum", "rmsprop", "adamw"),
    "schedule.name": ("cosine", "linear", "poly", "exponential", "constant"),
    "train.dtype": ("float32", "bfloat16", "float16"),
    "mixed_precision.level": ("O0", "O1", "O2", "O3"),
    "init.freeze": ("", "backbone"),
}
POSITIVE = ("train.batch_size", "train.epochs", "train.log_every_steps", "eval.batch_size", "eval.every_epochs",
            "checkpoint.every_epochs", "checkpoint.keep")
NON_NEGATIVE = ("optimizer.learning_rate", "optimizer.weight_decay", "optimizer.momentum", "optimizer.eps",
                "schedule.warmup_epochs", "schedule.init_lr", "schedule.end_lr", "loss.label_smoothing",
                "mixed_precision.loss_scale", "ema.decay")


def _get(config, key):
    section, field = key.split(".")
    return config[section][field]


def check(config) -> None:
    """Every check that can run before any work starts."""
    check_model(config.model)
    if config.dataset.image_size < 32:
        raise ConfigError(f"dataset.image_size={config.dataset.image_size} is too small; use 32 or more")
    for key, choices in CHOICES.items():
        if _get(config, key) not in choices:
            raise ConfigError(f"{key}={_get(config, key)!r} is not one of: {', '.join(map(repr, choices))}")
    for key in POSITIVE:
        if _get(config, key) < 1:
            raise ConfigError(f"{key}={_get(config, key)} must be at least 1")
    for key in NON_NEGATIVE:
        if _get(config, key) < 0:
            raise ConfigError(f"{key}={_get(config, key)} must not be negative")
    if config.loss.label_smoothing >= 1 or config.ema.decay >= 1:
        raise ConfigError("loss.label_smoothing and ema.decay must be below 1")
