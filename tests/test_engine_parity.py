"""Identical canonical weights give the same logits in JAX and in MindSpore, both directions."""
import jax.numpy as jnp
import numpy as np
import pytest

import mobilenets_jax
import mobilenets_ms
from mobilenets_core import specs, weights
from tests.helpers import FAMILIES, model_config, random_canonical_state

ATOL = 1e-4


def inputs():
    return np.random.default_rng(7).normal(0, 1, (2, 64, 64, 3)).astype(np.float32)


def jax_logits(module, variables):
    return np.asarray(module.apply(variables, jnp.asarray(inputs()), train=False))


# Every family both ways; ShuffleNetV1 g3 (grouped convolutions and the channel shuffle) in the
# quick suite, the others with the slow checks.
QUICK_FIRST = [pytest.param(*f, marks=() if f == ("shufflenet_v1", 0.5, 3) else pytest.mark.slow) for f in FAMILIES]

def ms_logits(net):
    import mindspore as ms
    return net(ms.Tensor(inputs())).asnumpy()


@pytest.mark.parametrize("name,width,groups", QUICK_FIRST)
def test_jax_weights_evaluate_identically_in_mindspore(tmp_path, name, width, groups):
    config = model_config(name, width, groups)
    arch = specs.architecture_from_config(config.model)
    module, _ = mobilenets_jax.load_model(config)
    variables = mobilenets_jax.from_canonical(random_canonical_state(arch, seed=1), arch)
    path = str(tmp_path / "from_jax.safetensors")
    mobilenets_jax.save_canonical(variables, config, path)
    net = mobilenets_ms.load_model(config, path)
    expected = jax_logits(module, variables)
    assert np.abs(expected).max() > 1e-2  # the comparison is not between two near-zero outputs
    np.testing.assert_allclose(ms_logits(net), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name,width,groups", QUICK_FIRST)
def test_mindspore_weights_evaluate_identically_in_jax(tmp_path, name, width, groups):
    config = model_config(name, width, groups)
    arch = specs.architecture_from_config(config.model)
    net = mobilenets_ms.load_model(config)
    mobilenets_ms.load_canonical(net, random_canonical_state(arch, seed=2))
    path = str(tmp_path / "from_ms.safetensors")
    mobilenets_ms.save_canonical(net, weights.ModelInfo.from_config(config.model), path)
    module, variables = mobilenets_jax.load_model(config, path)
    expected = ms_logits(net)
    np.testing.assert_allclose(jax_logits(module, variables), expected, rtol=0, atol=ATOL)


def test_one_wrong_tensor_breaks_parity():
    """The check is sharp: doubling one BatchNorm variance deep in the network moves the logits past ATOL."""
    config = model_config("mobilenet_v3_small", 0.75)
    arch = specs.architecture_from_config(config.model)
    state = random_canonical_state(arch, seed=3)
    module, _ = mobilenets_jax.load_model(config)
    reference = jax_logits(module, mobilenets_jax.from_canonical(state, arch))
    state["blocks.8.dw.bn.var"] = state["blocks.8.dw.bn.var"] * 2.0
    net = mobilenets_ms.load_model(config)
    mobilenets_ms.load_canonical(net, state)
    assert np.abs(ms_logits(net) - reference).max() > 10 * ATOL


def test_the_other_channel_shuffle_order_breaks_parity(monkeypatch):
    """The common (g, C/g) shuffle is a different network from MegVII's; parity would catch the mix-up."""
    from mobilenets_jax import models

    config = model_config("shufflenet_v1", 0.5, 3)
    arch = specs.architecture_from_config(config.model)
    state = random_canonical_state(arch, seed=4)
    net = mobilenets_ms.load_model(config)
    mobilenets_ms.load_canonical(net, state)

    def other_order(x, groups):
        n, h, w, c = x.shape
        return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)

    monkeypatch.setattr(models, "channel_shuffle", other_order)
    module, _ = mobilenets_jax.load_model(config)
    wrong = jax_logits(module, mobilenets_jax.from_canonical(state, arch))
    assert np.abs(ms_logits(net) - wrong).max() > 10 * ATOL


# MobileNetV2 and V4 (UIB, FusedIB, conv rows; Mobile MQA and layer scale in the hybrid), both ways.
NEW_FAMILIES = [("mobilenet_v2", 0.5, None), ("mobilenet_v4", 0.5, "conv_small"),
                pytest.param("mobilenet_v4", 0.75, "hybrid_medium", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,width,variant", NEW_FAMILIES)
def test_mobilenet_v2_and_v4_weights_evaluate_identically_in_both_engines(tmp_path, name, width, variant):
    config = model_config(name, width, variant=variant)
    arch = specs.architecture_from_config(config.model)
    module, _ = mobilenets_jax.load_model(config)
    variables = mobilenets_jax.from_canonical(random_canonical_state(arch, seed=5), arch)
    path = str(tmp_path / "from_jax.safetensors")
    mobilenets_jax.save_canonical(variables, config, path)
    net = mobilenets_ms.load_model(config, path)
    expected = jax_logits(module, variables)
    assert np.abs(expected).max() > 1e-2
    # float32 rounding grows with the logits' scale: MobileNetV4 hybrid_medium's reach 5 and differ
    # by 1.3e-4 between the engines on the AVX-512 Intel CPU (with or without oneDNN's AVX2 limit)
    atol = ATOL * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(ms_logits(net), expected, rtol=0, atol=atol)
    back = str(tmp_path / "from_ms.safetensors")
    mobilenets_ms.save_canonical(net, weights.ModelInfo.from_config(config.model), back)
    module, variables = mobilenets_jax.load_model(config, back)
    np.testing.assert_allclose(jax_logits(module, variables), expected, rtol=0, atol=ATOL)


def test_a_mobilenet_v4_file_names_its_variant_when_another_is_asked_for(tmp_path):
    config = model_config("mobilenet_v4", 0.5, variant="conv_small")
    arch = specs.architecture_from_config(config.model)
    path = str(tmp_path / "small.safetensors")
    weights.save(path, random_canonical_state(arch), weights.ModelInfo.from_config(config.model))
    with pytest.raises(Exception, match=r"model.variant='conv_small'.*model.variant='conv_medium'"):
        mobilenets_jax.load_model(model_config("mobilenet_v4", 1.0, variant="conv_medium"), path)
