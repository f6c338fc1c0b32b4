"""Imported timm weights give timm's logits, in both engines (fixtures: tools/make_timm_fixtures.py)."""
import os

import numpy as np
import pytest

from mobilenets_core import specs
from mobilenets_core.weights import timm as timm_format
from tests import timm_reference as ref

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


# Whole networks that take more than ~20 s here (compile and run) are slow checks; the quick suite keeps
# the MobileNetV1 / V3 fixtures, MobileNetV2 0.5 and MobileNetV4 conv_small 0.5 on both engines, and
# hybrid_medium 0.75 (attention) on MindSpore (JAX compiles it in ~30 s).
SLOW = {"mobilenetv2_140", "mobilenetv4_conv_small", "mobilenetv4_conv_medium", "mobilenetv4_conv_large",
        "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_large"}
NEW_FAMILIES = sorted(n for n in ref.FIXTURE_MODELS if n.startswith(("mobilenetv2_", "mobilenetv4_")))


def marked(names, slow=SLOW):
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


def load_case(timm_name):
    keys, logits, meta = ref.load_fixture(os.path.join(FIXTURES, f"timm_{timm_name}.npz"))
    arch = specs.build_architecture(meta["model"], meta["width"], None, meta["num_classes"],
                                    variant=meta.get("variant"))
    return arch, ref.random_state(keys), logits


@pytest.mark.parametrize("timm_name", marked(sorted(ref.FIXTURE_MODELS), SLOW | {"mobilenetv4_hybrid_medium_075"}))
def test_jax_matches_timm_logits(timm_name):
    import jax.numpy as jnp

    from mobilenets_jax import from_canonical, models

    arch, timm_state, expected = load_case(timm_name)
    network = models.Network(arch, bn_eps=timm_format.TIMM_BN_EPS)
    variables = from_canonical(timm_format.from_timm(timm_state, arch), arch)
    logits = np.asarray(network.apply(variables, jnp.asarray(ref.random_input()), train=False))
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("timm_name", marked(NEW_FAMILIES))
def test_mindspore_matches_timm_logits(timm_name):
    import mindspore as ms

    from mobilenets_ms import load_canonical, models

    arch, timm_state, expected = load_case(timm_name)
    net = models.Network(arch, bn_eps=timm_format.TIMM_BN_EPS)
    net.set_train(False)
    load_canonical(net, timm_format.from_timm(timm_state, arch))
    logits = net(ms.Tensor(ref.random_input())).asnumpy()
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("timm_name", ["mobilenetv3_small_100", "mobilenetv2_050", "mobilenetv4_hybrid_medium_075"])
def test_timm_round_trip_is_lossless(timm_name):
    arch, timm_state, _ = load_case(timm_name)
    back = timm_format.to_timm(timm_format.from_timm(timm_state, arch), arch)
    assert sorted(back) == sorted(timm_state)
    for key, value in timm_state.items():
        np.testing.assert_array_equal(back[key], value)


def test_timm_weights_of_another_width_are_rejected_with_names():
    arch, timm_state, _ = load_case("mobilenetv3_small_075")
    wider = specs.build_architecture("mobilenet_v3_small", 1.0, None, ref.NUM_CLASSES)
    with pytest.raises(ValueError, match=r"shape mismatch: stem\.conv\.weight|blocks\."):
        timm_format.from_timm(timm_state, wider)


def test_timm_key_that_is_missing_is_named():
    arch, timm_state, _ = load_case("mobilenetv1_100")
    del timm_state["blocks.2.1.conv_pw.weight"]
    with pytest.raises(ValueError, match=r"\n  missing: blocks\.2\.1\.conv_pw\.weight$"):
        timm_format.from_timm(timm_state, arch)
