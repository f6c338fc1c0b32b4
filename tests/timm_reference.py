"""Deterministic random weights for timm parity fixtures, shared by the fixture script and the tests.

The fixture files store timm's key names and shapes, the input and timm's logits, not the
weights: both sides regenerate the same weights from (seed, key index) with NumPy alone.
"""
import json

import numpy as np

FIXTURE_MODELS = {
    # timm model name -> (our model name, width, model.variant)
    "mobilenetv1_100": ("mobilenet_v1", 1.0, None),
    "mobilenetv3_small_075": ("mobilenet_v3_small", 0.75, None),
    "mobilenetv3_small_100": ("mobilenet_v3_small", 1.0, None),
    "mobilenetv3_large_075": ("mobilenet_v3_large", 0.75, None),
    "mobilenetv3_large_100": ("mobilenet_v3_large", 1.0, None),
    "mobilenetv2_050": ("mobilenet_v2", 0.5, None),
    "mobilenetv2_140": ("mobilenet_v2", 1.4, None),
    "mobilenetv4_conv_small_050": ("mobilenet_v4", 0.5, "conv_small"),
    "mobilenetv4_conv_small": ("mobilenet_v4", 1.0, "conv_small"),
    "mobilenetv4_conv_medium": ("mobilenet_v4", 1.0, "conv_medium"),
    "mobilenetv4_conv_large": ("mobilenet_v4", 1.0, "conv_large"),
    "mobilenetv4_hybrid_medium_075": ("mobilenet_v4", 0.75, "hybrid_medium"),
    "mobilenetv4_hybrid_medium": ("mobilenet_v4", 1.0, "hybrid_medium"),
    "mobilenetv4_hybrid_large": ("mobilenet_v4", 1.0, "hybrid_large"),
}
NUM_CLASSES = 10
IMAGE_SIZE = 64
SEED = 20261123


def random_state(keys_and_shapes, seed: int = SEED) -> dict:
    """Weights with BatchNorm statistics far from identity, so every layer shapes the logits."""
    state = {}
    for index, (key, shape) in enumerate(keys_and_shapes):
        if key.endswith("num_batches_tracked"):
            continue
        rng = np.random.default_rng([seed, index])
        leaf = key.rsplit(".", 1)[-1]
        module = key.rsplit(".", 2)[-2] if key.count(".") else ""
        is_bn = module.startswith("bn") or module in ("norm", "norm_head")  # MobileNetV4 names some BatchNorms norm
        if leaf == "running_var":
            value = rng.uniform(0.5, 2.0, shape)
        elif leaf == "running_mean":
            value = rng.normal(0.0, 0.2, shape)
        elif leaf == "gamma" or key.endswith("pw_proj.bn.weight"):
            # MobileNetV4's residual branches (layer scale, UIB projection BN) small: activations then grow
            # slowly over its deep residual stacks, and logits stay O(1)
            value = rng.uniform(0.05, 0.25, shape)
        elif is_bn and leaf == "weight":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.1, shape)
        else:  # conv OIHW or dense (out, in): He-style scale on fan-in
            fan_in = int(np.prod(shape[1:]))
            # a small classifier keeps logits O(1), where a 1e-4 absolute tolerance is meaningful
            scale = 0.2 if key.startswith("classifier") else 1.0
            value = rng.normal(0.0, scale * np.sqrt(2.0 / fan_in), shape)
        state[key] = value.astype(np.float32)
    return state


def random_input(seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.0, (2, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)


def save_fixture(path: str, keys_and_shapes, logits: np.ndarray, meta: dict) -> None:
    meta = dict(meta, keys=[[k, list(s)] for k, s in keys_and_shapes])
    np.savez_compressed(path, logits=logits.astype(np.float32), meta=np.array(json.dumps(meta)))


def load_fixture(path: str):
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        return [(k, tuple(s)) for k, s in meta.pop("keys")], f["logits"], meta
