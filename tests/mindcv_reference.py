"""Deterministic random weights for mindcv parity fixtures, shared by the fixture script and the tests.

As for timm (tests/timm_reference.py, whose input and fixture file layout these share): a fixture
stores mindcv's parameter names and shapes (`parameters_and_names()` order, which is also
`mindspore.save_checkpoint`'s), the logits of mindcv's network in eval mode and its parameter and
multiply-add counts, not the weights: both sides regenerate them from (seed, name index) with NumPy.
"""
import numpy as np

from tests.timm_reference import IMAGE_SIZE, NUM_CLASSES, load_fixture, random_input, save_fixture

# mindcv model name -> (our model name, width, groups): every network mindcv 0.3.0 registers for our families
FIXTURE_MODELS = {
    "mobilenet_v1_025": ("mobilenet_v1", 0.25, None),
    "mobilenet_v1_050": ("mobilenet_v1", 0.5, None),
    "mobilenet_v1_075": ("mobilenet_v1", 0.75, None),
    "mobilenet_v1_100": ("mobilenet_v1", 1.0, None),
    "mobilenet_v3_small_075": ("mobilenet_v3_small", 0.75, None),
    "mobilenet_v3_small_100": ("mobilenet_v3_small", 1.0, None),
    "mobilenet_v3_large_075": ("mobilenet_v3_large", 0.75, None),
    "mobilenet_v3_large_100": ("mobilenet_v3_large", 1.0, None),
    **{f"shufflenet_v1_g{g}_{s}": ("shufflenet_v1", w, g) for g in (3, 8)
       for s, w in (("05", 0.5), ("10", 1.0), ("15", 1.5), ("20", 2.0))},
}
SEED = 20261202

__all__ = ["FIXTURE_MODELS", "IMAGE_SIZE", "NUM_CLASSES", "load_fixture", "random_input", "random_state",
           "save_fixture"]


def random_state(keys_and_shapes, seed: int = SEED) -> dict:
    """Weights with BatchNorm statistics far from identity that keep every layer shaping the logits.

    MobileNets: gains gamma / sqrt(var) around 1, as tests/timm_reference.py draws them (smaller ones
    shrink the signal through 27 layers until the logits are the BatchNorm offsets alone, blind to the
    padding and to ReLU against ReLU6). ShuffleNetV1 (`first_conv.*`): gains at most 1, or its 12
    residual additions grow the logits to thousands, where an absolute 1e-4 tolerance means nothing."""
    shufflenet = any(key.startswith("first_conv.") for key, _ in keys_and_shapes)
    gamma, var = ((0.5, 1.0), (1.0, 2.0)) if shufflenet else ((0.5, 1.5), (0.5, 2.0))
    state = {}
    for index, (key, shape) in enumerate(keys_and_shapes):
        rng = np.random.default_rng([seed, index])
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "moving_variance":
            value = rng.uniform(*var, shape)
        elif leaf in ("moving_mean", "beta", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif leaf == "gamma":
            value = rng.uniform(*gamma, shape)
        else:  # conv OIHW or dense (out, in): He-style scale on fan-in
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        state[key] = value.astype(np.float32)
    return state
