"""MindSpore engine models: parameter counts, canonical round trips, error messages.

Cells are built without a forward pass where only structure matters; forward passes use
64 x 64 inputs and the smallest width of each family.
"""
import dataclasses

import mindspore as ms
import numpy as np
import pytest

import mobilenets_ms
from configs.base import get_config
from mobilenets_core import specs
from mobilenets_core import weights as canonical
from mobilenets_ms import models

FAMILIES = [("mobilenet_v1", None), ("mobilenet_v3_small", None), ("mobilenet_v3_large", None), ("shufflenet_v1", 3)]
VARIANTS = ([(name, width, None) for name in specs.MODEL_NAMES if name not in ("shufflenet_v1", "mobilenet_v4")
             for width in specs.SUPPORTED_WIDTHS[name]]
            + [("shufflenet_v1", width, groups) for groups in specs.SHUFFLENET_GROUPS
               for width in specs.SUPPORTED_WIDTHS["shufflenet_v1"]])


def make_config(name, width=1.0, groups=None, num_classes=1000, bn_eps=1e-5):
    config = get_config()
    config.model.name = name
    config.model.width = width
    config.model.groups = groups
    config.model.num_classes = num_classes
    config.model.bn_eps = bn_eps
    return config


def random_state(arch, seed=0):
    """A canonical state with distinct values everywhere (positive BatchNorm variances)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, (shape, _) in specs.canonical_shapes(arch).items():
        if name.endswith(".var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            value = rng.standard_normal(shape) * np.sqrt(1.0 / np.prod(shape[1:]))
        else:
            value = rng.standard_normal(shape) * 0.1
        state[name] = value.astype(np.float32)
    return state


def smallest(name, groups):
    return make_config(name, specs.SUPPORTED_WIDTHS[name][0], groups, num_classes=10)


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name,width,groups", VARIANTS)
def test_parameter_count_matches_specs(name, width, groups):
    config = make_config(name, width, groups)
    arch = specs.architecture_from_config(config.model)
    assert mobilenets_ms.count_parameters(config) == specs.count_params(arch)


@pytest.mark.parametrize("variant,width", [(v, w) for v, ws in specs.MOBILENET_V4_WIDTHS.items() for w in ws])
def test_mobilenet_v4_parameter_count_matches_specs(variant, width):
    config = make_config("mobilenet_v4", width)
    config.model.variant = variant
    arch = specs.architecture_from_config(config.model)
    assert mobilenets_ms.count_parameters(config) == specs.count_params(arch)


@pytest.mark.parametrize("name,groups,expected", [
    ("mobilenet_v1", None, 4_231_976),
    ("mobilenet_v3_small", None, 2_542_856),
    ("mobilenet_v3_large", None, 5_483_032),
    ("shufflenet_v1", 3, 1_864_728),
])
def test_reference_parameter_counts(name, groups, expected):
    assert mobilenets_ms.count_parameters(make_config(name, 1.0, groups)) == expected


# ----------------------------------------------------------------------------- canonical round trip


@pytest.mark.parametrize("name,groups", FAMILIES)
def test_canonical_round_trip_and_logits_shape(name, groups):
    config = smallest(name, groups)
    net = mobilenets_ms.load_model(config)
    state = random_state(net.arch)
    mobilenets_ms.load_canonical(net, state)
    back = mobilenets_ms.to_canonical(net)
    assert list(back) == list(specs.canonical_shapes(net.arch))
    for key, value in state.items():
        assert back[key].dtype == np.float32
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    logits = net(ms.Tensor(np.random.default_rng(1).random((2, 64, 64, 3), dtype=np.float32)))
    assert logits.shape == (2, 10)
    assert np.isfinite(logits.asnumpy()).all()


def test_cell_parameter_names_are_canonical_names():
    """Parameter.name (what MindSpore checkpoints store) is the canonical name up to BN's renames."""
    net = models.build_network(smallest("mobilenet_v3_small", None).model)
    names = [p.name for p in net.get_parameters()]
    assert names == [n for n, _ in net.parameters_and_names()]
    assert "blocks.0.se.reduce.weight" in names and "head.conv.bias" in names
    assert "blocks.3.dw.bn.gamma" in names and "blocks.3.dw.bn.moving_variance" in names


def test_graph_mode_compiles_and_matches_pynative():
    config = smallest("shufflenet_v1", 2)  # channel shuffle, both shortcut kinds, max-pool stem
    net = mobilenets_ms.load_model(config)
    mobilenets_ms.load_canonical(net, random_state(net.arch))
    x = ms.Tensor(np.random.default_rng(2).random((2, 64, 64, 3), dtype=np.float32))
    eager = net(x).asnumpy()
    previous = ms.get_context("mode")
    try:
        ms.set_context(mode=ms.GRAPH_MODE)
        graph = net(x).asnumpy()
    finally:
        ms.set_context(mode=previous)
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-5 * np.abs(eager).max())


def test_shuffle_shortcut_and_stem_pool_use_same_padding():
    """Both pools: windows start at 0 and pad one after (MindSpore "same"); the average counts
    real pixels only, the max ignores padding."""
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32) - 5.0
    padded = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=np.nan)
    windows = np.stack([padded[:, :, i:i + 3, j:j + 3] for i in range(0, 6, 2) for j in range(0, 6, 2)])
    expected_avg = np.nanmean(windows, axis=(3, 4))
    expected_max = np.nanmax(windows, axis=(3, 4))
    unit = models.ShuffleUnit(specs.ShuffleUnit("u", 2, 8, 2, 1, 1, 2), 1e-5, 0.9, np.random.default_rng(0))
    pool = models.MaxPool(specs.MaxPool("p"))
    got_avg = unit.shortcut_pool(ms.Tensor(x)).asnumpy()
    got_max = pool(ms.Tensor(x)).asnumpy()
    np.testing.assert_allclose(got_avg, np.moveaxis(expected_avg, 0, -1).reshape(1, 2, 3, 3), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got_max, np.moveaxis(expected_max, 0, -1).reshape(1, 2, 3, 3))


def test_channel_shuffle_is_megvii_order():
    x = ms.Tensor(np.arange(12, dtype=np.float32).reshape(1, 12, 1, 1))
    out = models.channel_shuffle(x, 3).asnumpy().ravel()
    np.testing.assert_array_equal(out, [i * 3 + j for j in range(3) for i in range(4)])


# ----------------------------------------------------------------------------- errors name the bad tensor


def test_wrong_shape_missing_and_unexpected_tensors_are_named():
    net = models.build_network(smallest("mobilenet_v3_small", None).model)
    good = random_state(net.arch)

    wrong = dict(good, **{"blocks.2.project.conv.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"blocks\.2\.project\.conv\.weight"):
        mobilenets_ms.load_canonical(net, wrong)

    missing = {k: v for k, v in good.items() if k != "blocks.0.se.expand.bias"}
    with pytest.raises(ValueError, match=r"missing.*blocks\.0\.se\.expand\.bias"):
        mobilenets_ms.load_canonical(net, missing)

    extra = dict(good, **{"blocks.99.dw.bn.scale": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected.*blocks\.99\.dw\.bn\.scale"):
        mobilenets_ms.load_canonical(net, extra)

    # Nothing was written by the failed loads: the Cell still holds its own initial weights.
    assert not np.array_equal(mobilenets_ms.to_canonical(net)["stem.conv.weight"], good["stem.conv.weight"])


def test_to_canonical_rejects_a_foreign_cell():
    with pytest.raises(ValueError, match="not a mobilenets_ms network"):
        mobilenets_ms.to_canonical(ms.nn.Dense(2, 2))


# ----------------------------------------------------------------------------- load_model with a weight file


def test_load_model_uses_file_weights_and_bn_eps(tmp_path):
    config = smallest("mobilenet_v1", None)
    source = mobilenets_ms.load_model(config)
    state = random_state(source.arch, seed=4)
    mobilenets_ms.load_canonical(source, state)
    path = str(tmp_path / "v1.safetensors")
    info = dataclasses.replace(canonical.ModelInfo.from_config(config.model), bn_eps=1e-3)
    mobilenets_ms.save_canonical(source, info, path)

    loaded = mobilenets_ms.load_model(config, weights=path)  # config says bn_eps=1e-5, file 1e-3
    assert not loaded.training
    assert loaded.stem.bn.eps == pytest.approx(1e-3)
    assert loaded.blocks[12].pw.bn.eps == pytest.approx(1e-3)
    for key, value in mobilenets_ms.to_canonical(loaded).items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)


@pytest.mark.parametrize("field,value", [("groups", 8), ("width", 1.0), ("num_classes", 7)])
def test_load_model_rejects_a_file_for_another_model(tmp_path, field, value):
    config = smallest("shufflenet_v1", 3)
    net = mobilenets_ms.load_model(config)
    path = str(tmp_path / "g3.safetensors")
    mobilenets_ms.save_canonical(net, canonical.ModelInfo.from_config(config.model), path)
    setattr(config.model, field, value)
    with pytest.raises(ValueError, match=rf"^weights='{path}' holds model\.{field}=.*; this config has model\.{field}={value}"):
        mobilenets_ms.load_model(config, weights=path)


def test_load_model_rejects_a_file_for_another_family(tmp_path):
    v1 = smallest("mobilenet_v1", None)
    path = str(tmp_path / "v1.safetensors")
    mobilenets_ms.save_canonical(mobilenets_ms.load_model(v1), canonical.ModelInfo.from_config(v1.model), path)
    with pytest.raises(ValueError, match=r"holds model\.name='mobilenet_v1', model\.width=0\.25 \(by its metadata\); "
                                         r"this config has model\.name='mobilenet_v3_small', model\.width=0\.5: "):
        mobilenets_ms.load_model(smallest("mobilenet_v3_small", None), weights=path)
