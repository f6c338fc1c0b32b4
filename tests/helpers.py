"""Small shared helpers for the tests."""
import numpy as np

from configs import base
from mobilenets_core import specs


def model_config(name="mobilenet_v3_small", width=1.0, groups=None, num_classes=10, **model_fields):
    config = base.get_config()
    config.model.name, config.model.width, config.model.groups = name, width, groups
    config.model.num_classes = num_classes
    for key, value in model_fields.items():
        config.model[key] = value
    return config


def random_canonical_state(arch: specs.Architecture, seed: int = 0) -> dict:
    """Random weights in canonical layout with non-trivial BatchNorm statistics.

    BatchNorm gains stay at most 1 (scale <= 1, var >= 1), so activations stay O(1) through
    deep networks and logits land where an absolute 1e-4 tolerance is meaningful."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, (shape, _) in specs.canonical_shapes(arch).items():
        if name.endswith(".var"):
            value = rng.uniform(1.0, 2.0, shape)
        elif name.endswith(".mean") or name.endswith(".bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith(".scale"):
            value = rng.uniform(0.5, 1.0, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, (0.2 if name.startswith("classifier") else 1.0) * np.sqrt(2.0 / fan_in), shape)
        state[name] = value.astype(np.float32)
    return state


# One small-ish variant per family, with the features each family exercises.
FAMILIES = [("mobilenet_v1", 0.25, None), ("mobilenet_v3_small", 0.75, None),
            ("mobilenet_v3_large", 0.75, None), ("shufflenet_v1", 0.5, 3), ("shufflenet_v1", 0.5, 8)]


# The tiny V2 / V4 runs train at 0.02, not the tiny config's 0.05: at 32 px V4's late stages are
# 1x1, and at 0.05 its loss spikes above ln(10) on every seed and on both JAX conv paths, so a
# falling loss would be luck, not learning.
TINY_V2_V4_LEARNING_RATE = 0.02


def tiny_train_config(**overrides):
    """MobileNetV3-Small 0.5 on digits at 32 px: a real network and real data, seconds per epoch."""
    config = base.get_config()
    config.model.name, config.model.width, config.model.num_classes = "mobilenet_v3_small", 0.5, 10
    config.model.dropout = 0.0
    config.dataset.name, config.dataset.image_size = "digits", 32
    config.train.batch_size, config.train.epochs, config.train.log_every_steps = 32, 2, 5
    config.eval.batch_size = 100  # does not divide the 359 validation images
    config.optimizer.name, config.optimizer.learning_rate = "momentum", 0.05
    config.schedule.warmup_epochs = 0.5
    config.loss.label_smoothing = 0.1
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config
