"""`load_model` on both engines takes every weight file `init.weights` takes, and gives the same network."""
import os

import numpy as np
import pytest

import mobilenets_jax
import mobilenets_ms
from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights import ModelInfo, canonical, convert, mindspore_ckpt
from mobilenets_core.weights import timm as timm_format
from mobilenets_jax import train as jax_train
from mobilenets_ms import train as ms_train
from tests import timm_reference as ref
from tests.helpers import model_config, random_canonical_state

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
INFO = ModelInfo("mobilenet_v3_small", 0.75, None, ref.NUM_CLASSES, 1e-3)  # an epsilon that is not timm's


def config_of(info: ModelInfo):
    config = model_config(info.name, info.width, info.groups, info.num_classes)
    config.model.bn_eps = 1e-5  # the file's epsilon must win
    return config


def jax_logits(config, weights, images):
    module, variables = mobilenets_jax.load_model(config, weights=weights)
    return module, variables, np.asarray(module.apply(variables, images, train=False))


def ms_logits(config, weights, images):
    import mindspore as ms

    net = mobilenets_ms.load_model(config, weights=weights)
    return net, net(ms.Tensor(images)).asnumpy()


def test_a_timm_file_gives_timms_logits_on_both_engines(tmp_path):
    from safetensors.numpy import save_file

    keys, expected, meta = ref.load_fixture(os.path.join(FIXTURES, "timm_mobilenetv3_small_075.npz"))
    path = str(tmp_path / "timm.safetensors")
    save_file(ref.random_state(keys), path)
    config = config_of(ModelInfo(meta["model"], meta["width"], None, meta["num_classes"], 1e-5))
    images = ref.random_input()
    module, _, logits = jax_logits(config, path, images)
    assert module.bn_eps == timm_format.TIMM_BN_EPS
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    _, logits = ms_logits(config, path, images)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One state in every format load_model reads: {kind: path}, and the state."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("formats")
    state = random_canonical_state(INFO.architecture(), seed=11)
    paths = {"canonical": str(root / "w.safetensors"), "MindSpore checkpoint": str(root / "w.ckpt"),
             "timm state dict": str(root / "timm.safetensors")}
    canonical.save(paths["canonical"], state, INFO)
    mindspore_ckpt.write(paths["MindSpore checkpoint"], mindspore_ckpt.from_canonical(state, bn_eps=INFO.bn_eps))
    save_file(timm_format.to_timm(state, INFO.architecture()), paths["timm state dict"])
    for kind, writer in (("JAX workdir", jax_train.write_weights_workdir),
                         ("MindSpore workdir", ms_train.write_weights_workdir)):
        config = config_of(INFO)
        config.init.weights, config.convert.output = paths["canonical"], str(root / kind.replace(" ", "_"))
        paths[kind] = convert.convert(config, writer)
    return paths, state


@pytest.mark.parametrize("kind", ["canonical", "timm state dict", "MindSpore checkpoint", "JAX workdir",
                                  "MindSpore workdir"])
def test_every_format_loads_the_same_tensors_on_both_engines(files, kind):
    paths, state = files
    eps = timm_format.TIMM_BN_EPS if kind == "timm state dict" else INFO.bn_eps  # a timm file does not say
    config = config_of(INFO)
    module, variables = mobilenets_jax.load_model(config, weights=paths[kind])
    net = mobilenets_ms.load_model(config, weights=paths[kind])
    assert module.bn_eps == pytest.approx(eps) and net.stem.bn.eps == pytest.approx(eps)
    assert not net.training
    for engine, loaded in (("jax", mobilenets_jax.to_canonical(variables, module.arch)),
                           ("mindspore", mobilenets_ms.to_canonical(net))):
        assert list(loaded) == list(state)
        for name, value in state.items():
            np.testing.assert_array_equal(loaded[name], value, err_msg=f"{kind} in {engine}: {name}")


def test_a_file_of_another_class_count_is_refused_naming_both(files):
    paths, _ = files
    config = config_of(INFO)
    config.model.num_classes = 7
    for load in (mobilenets_jax.load_model, mobilenets_ms.load_model):
        with pytest.raises(ConfigError, match=rf"^weights='{paths['MindSpore checkpoint']}' holds model.num_classes=10 "
                                              r"\(by its classifier\); this config has model.num_classes=7: set it "
                                              r"to the file's value$"):
            load(config, weights=paths["MindSpore checkpoint"])


def test_a_torch_pickle_loads_with_torch_and_says_how_without(files, tmp_path):
    paths, state = files
    path = str(tmp_path / "timm.pth")
    config = config_of(INFO)
    try:
        import torch
    except ImportError:
        (tmp_path / "timm.pth").write_bytes(b"PK\x03\x04")
        with pytest.raises(ConfigError, match=r"is a PyTorch pickle; install torch to read it, or convert it to "
                                              r"\.safetensors first"):
            mobilenets_jax.load_model(config, weights=path)
        return
    timm_state = timm_format.to_timm(state, INFO.architecture())
    torch.save({k: torch.from_numpy(v) for k, v in timm_state.items()}, path)
    module, variables = mobilenets_jax.load_model(config, weights=path)
    loaded = mobilenets_jax.to_canonical(variables, module.arch)
    for name, value in state.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_a_directory_without_checkpoints_is_named(tmp_path):
    with pytest.raises(ConfigError, match=rf"^weights='{tmp_path}' is a directory holding no checkpoints/ or "
                                          r"ms_checkpoints/ with a checkpoint; name a workdir of one engine"):
        mobilenets_jax.load_model(config_of(INFO), weights=str(tmp_path))
