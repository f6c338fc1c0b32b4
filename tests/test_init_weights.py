"""Starting a JAX run from weights: every supported file, classifier re-initialisation, frozen backbone."""
import numpy as np
import pytest

import mobilenets_jax
from mobilenets_core import specs, weights
from mobilenets_core.config_check import ConfigError
from mobilenets_core.data import build_dataset
from mobilenets_core.weights import mindspore_ckpt, workdirs
from mobilenets_core.weights import timm as timm_format
from mobilenets_jax import train
from tests.helpers import random_canonical_state, tiny_train_config


def canonical_file(tmp_path, num_classes, name="w.safetensors", eps=1e-3):
    arch = specs.build_architecture("mobilenet_v3_small", 0.5, None, num_classes)
    state = random_canonical_state(arch, seed=5)
    path = str(tmp_path / name)
    weights.save(path, state, weights.ModelInfo("mobilenet_v3_small", 0.5, None, num_classes, eps))
    return path, state


def start(config):
    """The first TrainState of a run (what train_and_evaluate starts from)."""
    dataset = build_dataset(config, "train")
    trainer = train.Trainer(config, dataset.steps_per_epoch(config.train.batch_size))
    messages = []
    trainer, variables = train._imported_start(config, trainer, dataset.steps_per_epoch(config.train.batch_size),
                                               messages.append)
    return trainer, trainer.init_state(0, variables), messages


def canonical_of(state, trainer):
    return mobilenets_jax.to_canonical({"params": state.params, "batch_stats": state.batch_stats}, trainer.module.arch)


def test_canonical_file_with_other_classes_reinitialises_only_the_classifier(tmp_path):
    path, source = canonical_file(tmp_path, num_classes=5)
    config = tiny_train_config(**{"init.weights": path})
    trainer, state, messages = start(config)
    loaded = canonical_of(state, trainer)
    for name, value in source.items():
        if not name.startswith("classifier"):
            np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert loaded["classifier.weight"].shape == (10, 1024)
    assert "classifier re-initialised for 10 classes (the file has 5)" in messages[0]
    assert config.model.bn_eps == 1e-3 and trainer.module.bn_eps == 1e-3  # the file's epsilon


def test_timm_and_mindspore_files_load_the_same_tensors(tmp_path):
    from safetensors.numpy import save_file

    path, source = canonical_file(tmp_path, num_classes=10, eps=1e-5)
    arch = specs.build_architecture("mobilenet_v3_small", 0.5, None, 10)
    save_file(timm_format.to_timm(source, arch), str(tmp_path / "timm.safetensors"))
    mindspore_ckpt.write(str(tmp_path / "ms.ckpt"), mindspore_ckpt.from_canonical(source))
    for file in ("timm.safetensors", "ms.ckpt"):
        config = tiny_train_config(**{"init.weights": str(tmp_path / file)})
        trainer, state, messages = start(config)
        loaded = canonical_of(state, trainer)
        for name, value in source.items():
            np.testing.assert_array_equal(loaded[name], value, err_msg=f"{file}: {name}")
        assert "re-initialised" not in messages[0]


def test_a_file_of_another_width_stops_naming_the_tensors(tmp_path):
    path, _ = canonical_file(tmp_path, num_classes=10)
    config = tiny_train_config(**{"init.weights": path, "model.width": 0.75})
    with pytest.raises(ConfigError, match=r"do not fit mobilenet_v3_small width=0.75 groups=None:\n  shape mismatch: "
                                          r"stem\.conv\.weight|shape mismatch: blocks\."):
        start(config)


def test_frozen_backbone_does_not_move(tmp_path):
    path, _ = canonical_file(tmp_path, num_classes=10, eps=1e-5)
    config = tiny_train_config(**{"init.weights": path, "init.freeze": "backbone", "train.epochs": 1})
    trainer, state, _ = start(config)
    before = canonical_of(state, trainer)
    dataset = build_dataset(config, "train")
    for i, batch in enumerate(dataset.train_batches(config.train.batch_size, epoch=0)):
        if i == 5:
            break
        state, _ = trainer.train_step(state, trainer.to_global(batch))
    after = canonical_of(state, trainer)
    moved = [n for n in before if not np.array_equal(before[n], after[n])]
    assert sorted(moved) == ["classifier.bias", "classifier.weight", "head.conv.bias", "head.conv.weight"]


def test_jax_workdir_as_initial_weights(tmp_path):
    config = tiny_train_config(**{"train.epochs": 1, "train.batch_size": 128})
    result = train.train_and_evaluate(config, str(tmp_path / "first"))
    trained, _, _ = workdirs.read(str(tmp_path / "first"))
    config = tiny_train_config(**{"init.weights": str(tmp_path / "first")})
    trainer, state, messages = start(config)
    loaded = canonical_of(state, trainer)
    assert messages[0].startswith(f"initialised from JAX workdir {tmp_path / 'first'}")
    for name, value in trained.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert result["count"] == 359
