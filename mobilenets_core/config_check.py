"""Config checks shared by both engines: one-line errors naming the key and what is accepted."""
from __future__ import annotations

import difflib
import math

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


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def wrong_type_message(config, dotted: str, value: str, reason: str) -> str:
    """One line for `--config.<dotted>=<value>` that does not parse as the field's type."""
    unknown = unknown_key_message(config, dotted)
    if unknown:
        return unknown
    section, _, field = dotted.rpartition(".")
    node = config
    for part in filter(None, section.split(".")):
        node = node[part]
    if hasattr(node[field], "keys"):
        return (f"--config.{dotted}={value!r}: {dotted} is a section, not a value; set one of its keys, e.g. "
                f"--config.{dotted}.{sorted(node[field].keys())[0]}=...; valid keys in {dotted}: "
                f"{', '.join(sorted(node[field].keys()))}")
    try:
        kind = node.get_type(field)
    except (AttributeError, KeyError, TypeError):
        kind = type(node[field])
    expected = _KINDS.get(kind, getattr(kind, "__name__", str(kind)))
    reason = " ".join(str(reason).split())[:200]
    return (f"--config.{dotted}={value!r} is not {expected} ({reason}); the recipe has "
            f"{dotted}={node[field]!r}")


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
    if model_cfg.num_classes < 2:
        raise ConfigError(f"model.num_classes={model_cfg.num_classes} must be at least 2 (a classifier of one "
                          f"class learns nothing)")
    if model_cfg.bn_eps <= 0:
        raise ConfigError(f"model.bn_eps={model_cfg.bn_eps} must be positive (1e-5 timm/MindSpore, 1e-3 TF)")


MAX_IMAGE_SIZE = 4096  # pixels a side; far above any recipe, far below what exhausts a host's memory

CHOICES = {
    "optimizer.name": ("momentum", "rmsprop", "adamw"),
    "schedule.name": ("cosine", "linear", "poly", "exponential", "constant"),
    "train.dtype": ("float32", "bfloat16", "float16"),
    "mixed_precision.level": ("O0", "O1", "O2", "O3"),
    "init.freeze": ("", "backbone"),
    "convert.format": ("", "canonical", "timm", "mindspore", "mindcv", "workdir"),
    "model.convention": ("timm", "mindcv"),  # specs.CONVENTIONS
    "model.conv_impl": ("auto", "fast", "xla"),  # mobilenets_jax.layers / mobilenets_ms.layers CONV_IMPLS
}
POSITIVE = ("bench.batch_size", "bench.steps", "bench.repeats", "train.batch_size", "train.epochs",
            "dataset.max_image_pixels", "train.log_every_steps", "eval.batch_size", "eval.every_epochs", "checkpoint.every_epochs",
            "checkpoint.keep", "predict.top_k", "mixed_precision.dynamic_window")
NON_NEGATIVE = ("bench.warmup_steps", "optimizer.learning_rate", "optimizer.weight_decay", "optimizer.momentum", "optimizer.eps",
                "optimizer.beta1", "optimizer.beta2",
                "schedule.warmup_epochs", "schedule.init_lr", "schedule.end_lr", "loss.label_smoothing",
                "mixed_precision.loss_scale", "ema.decay", "eval.checkpoint")
BELOW_ONE = ("optimizer.momentum", "optimizer.decay", "optimizer.beta1", "optimizer.beta2", "loss.label_smoothing",
             "ema.decay")


def _get(config, key):
    section, field = key.split(".")
    if section not in config or field not in config[section]:
        return None  # a config without this field (an older recipe): the engine's default applies
    return config[section][field]


def check(config) -> None:
    """Every check that can run before any work starts."""
    check_model(config.model)
    for key in ("dataset.image_size", "eval.image_size"):
        size = _get(config, key)
        if size is not None and size < 32:
            raise ConfigError(f"{key}={size} is too small; use 32 or more")
        if size is not None and size > MAX_IMAGE_SIZE:
            batch = _get(config, "train.batch_size") or 1
            raise ConfigError(f"{key}={size} is above {MAX_IMAGE_SIZE}, the largest accepted: one batch of "
                              f"{batch} such images is {batch * size * size * 3 * 4 / 2**30:,.0f} GiB of input "
                              f"alone (these networks train at 224-384, timm's largest is 512)")
    for key, choices in CHOICES.items():
        if _get(config, key) is not None and _get(config, key) not in choices:
            raise ConfigError(f"{key}={_get(config, key)!r} is not one of: {', '.join(map(repr, choices))}")
    for key in POSITIVE:
        if _get(config, key) is not None and _get(config, key) < 1:
            raise ConfigError(f"{key}={_get(config, key)} must be at least 1")
    for key in NON_NEGATIVE:
        if _get(config, key) is not None and _get(config, key) < 0:
            raise ConfigError(f"{key}={_get(config, key)} must not be negative")
    for key in BELOW_ONE:
        if _get(config, key) is not None and _get(config, key) >= 1:
            raise ConfigError(f"{key}={_get(config, key)} must be below 1 (accepted: 0 <= {key.split('.')[1]} < 1)")
    check_numbers(config)
    check_schedule(config)
    check_dataset(config)


def _finite(config, key) -> None:
    value = _get(config, key)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value} must be a finite number")


def check_numbers(config) -> None:
    """No NaN or infinity anywhere; the dynamic loss scale's factor above 1 and its start at least 1."""
    for section in config.keys():
        if hasattr(config[section], "keys"):
            for field in config[section].keys():
                _finite(config, f"{section}.{field}")
    factor, init = _get(config, "mixed_precision.dynamic_factor"), _get(config, "mixed_precision.dynamic_init")
    if factor is not None and factor <= 1:
        raise ConfigError(f"mixed_precision.dynamic_factor={factor} must be above 1 (2 halves and doubles the scale)")
    if init is not None and init < 1:
        raise ConfigError(f"mixed_precision.dynamic_init={init} must be at least 1 (MindSpore's default is 2**24)")


def check_schedule(config) -> None:
    s = config.schedule
    if s.warmup_epochs > config.train.epochs:
        raise ConfigError(f"schedule.warmup_epochs={s.warmup_epochs} is longer than train.epochs="
                          f"{config.train.epochs}; use at most {config.train.epochs}")
    if s.name == "exponential" and not (s.decay_epochs > 0 and 0 < s.decay_rate <= 1):
        raise ConfigError(f"schedule.decay_epochs={s.decay_epochs}, schedule.decay_rate={s.decay_rate}: the "
                          f"exponential schedule needs decay_epochs > 0 and 0 < decay_rate <= 1")


def check_dataset(config) -> None:
    d = config.dataset
    if not d.name:
        raise ConfigError("dataset.name is empty; use 'digits', 'folder' or a TFDS name such as 'imagenet2012'")
    if d.name == "folder" and not d.path:
        raise ConfigError("dataset.name='folder' needs dataset.path: the directory holding train/<class>/*.jpg "
                          "and validation/<class>/*.jpg")
