"""The Flax networks: parameter counts from the model itself, weight loading, ShuffleNet primitives."""
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenets_jax
from mobilenets_core import specs, weights
from mobilenets_jax import models
from tests.helpers import FAMILIES, model_config, random_canonical_state


def all_variants():
    for name, widths in specs.SUPPORTED_WIDTHS.items():
        for width in widths:
            for groups in (specs.SHUFFLENET_GROUPS if name == "shufflenet_v1" else (None,)):
                yield name, width, groups


@pytest.mark.parametrize("name,width,groups", list(all_variants()))
def test_flax_parameter_count_equals_spec(name, width, groups):
    config = model_config(name, width, groups, num_classes=1000)
    assert mobilenets_jax.count_parameters(config) == specs.count_params(specs.architecture_from_config(config.model))


@pytest.mark.parametrize("variant,width", [(v, w) for v, ws in specs.MOBILENET_V4_WIDTHS.items() for w in ws])
def test_flax_mobilenet_v4_parameter_count_equals_spec(variant, width):
    config = model_config("mobilenet_v4", width, num_classes=1000, variant=variant)
    assert mobilenets_jax.count_parameters(config) == specs.count_params(specs.architecture_from_config(config.model))


@pytest.mark.parametrize("name,width,groups", FAMILIES)
def test_load_model_from_canonical_file(tmp_path, name, width, groups):
    config = model_config(name, width, groups)
    arch = specs.architecture_from_config(config.model)
    state = random_canonical_state(arch)
    path = str(tmp_path / "w.safetensors")
    weights.save(path, state, weights.ModelInfo(name, width, groups, 10, 1e-3))
    module, variables = mobilenets_jax.load_model(config, path)
    assert module.bn_eps == 1e-3  # evaluated with the file's epsilon, not the config's 1e-5
    logits = module.apply(variables, jnp.ones((2, 64, 64, 3)), train=False)
    assert logits.shape == (2, 10)
    back = mobilenets_jax.to_canonical(variables, arch)
    for key in state:
        np.testing.assert_array_equal(back[key], state[key])


def test_load_model_rejects_a_file_of_another_model(tmp_path):
    config = model_config("mobilenet_v3_small", 0.75)
    path = str(tmp_path / "w.safetensors")
    arch = specs.architecture_from_config(config.model)
    weights.save(path, random_canonical_state(arch), weights.ModelInfo("mobilenet_v3_small", 0.75, None, 10, 1e-5))
    config.model.width = 1.0
    with pytest.raises(ValueError, match=r"holds model\.width=0\.75 \(by its metadata\); this config has model\.width=1\.0: "):
        mobilenets_jax.load_model(config, path)


def test_channel_shuffle_is_megvii_order():
    x = jnp.arange(12.0).reshape(1, 1, 1, 12)
    out = np.asarray(models.channel_shuffle(x, 3)).ravel()
    # new[j * C/g + i] = old[i * g + j], C = 12, g = 3
    expected = [i * 3 + j for j in range(3) for i in range(4)]
    np.testing.assert_array_equal(out, expected)


def test_shufflenet_downsampling_unit_pools_with_same_padding_excluding_pad():
    """Stride-2 shortcut: 3x3 average of real pixels only, windows [0..2], [2..4], ... (MindSpore "same")."""
    arch = specs.build_architecture("shufflenet_v1", 0.5, 3, 10)
    unit = arch.blocks[2]
    block = models.Block(unit, 1e-5, 0.9)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (1, 4, 4, unit.in_ch)), jnp.float32)
    variables = block.init(__import__("jax").random.key(0), x, train=False)
    out = np.asarray(block.apply(variables, x, train=False))
    shortcut = out[..., : unit.in_ch]
    xn = np.asarray(x)
    np.testing.assert_allclose(shortcut[0, 0, 0], xn[0, 0:3, 0:3].mean(axis=(0, 1)), rtol=1e-6)
    np.testing.assert_allclose(shortcut[0, 1, 1], xn[0, 2:4, 2:4].mean(axis=(0, 1)), rtol=1e-6)  # corner: 4 pixels
