"""The canonical weight file: lossless, self-describing, and loud about anything that does not fit."""
import numpy as np
import pytest

from mobilenets_core import specs, weights
from tests.helpers import random_canonical_state

INFO = weights.ModelInfo("shufflenet_v1", 0.5, 3, 10, 1e-5)


def test_save_load_round_trip(tmp_path):
    state = random_canonical_state(INFO.architecture())
    path = str(tmp_path / "w.safetensors")
    weights.save(path, state, INFO)
    loaded, info = weights.load(path)
    assert info == INFO
    assert list(loaded) == list(state) or sorted(loaded) == sorted(state)
    for name in state:
        np.testing.assert_array_equal(loaded[name], state[name])


def test_save_refuses_incomplete_state_and_leaves_nothing(tmp_path):
    state = random_canonical_state(INFO.architecture())
    del state["blocks.0.dw.bn.var"]
    path = tmp_path / "w.safetensors"
    with pytest.raises(ValueError, match=r"missing: blocks\.0\.dw\.bn\.var"):
        weights.save(str(path), state, INFO)
    assert not path.exists()


def test_wrong_shape_is_named():
    state = random_canonical_state(INFO.architecture())
    state["classifier.weight"] = np.zeros((11, 480), np.float32)
    with pytest.raises(ValueError, match=r"classifier\.weight: \(11, 480\) != expected \(10, 480\)"):
        weights.check_state(state, INFO.architecture())


def test_truncated_and_foreign_files_are_rejected(tmp_path):
    path = tmp_path / "w.safetensors"
    weights.save(str(path), random_canonical_state(INFO.architecture()), INFO)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="could not be read as a .safetensors file"):
        weights.load(str(tmp_path / "cut.safetensors"))
    from safetensors.numpy import save_file
    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a mobilenets canonical weight file"):
        weights.load(str(tmp_path / "other.safetensors"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.load(str(tmp_path / "absent.safetensors"))


def test_canonical_names_follow_forward_order_and_layouts():
    shapes = specs.canonical_shapes(specs.build_architecture("mobilenet_v3_small", 1.0, None, 10))
    names = list(shapes)
    assert names[:5] == ["stem.conv.weight", "stem.bn.scale", "stem.bn.bias", "stem.bn.mean", "stem.bn.var"]
    assert shapes["blocks.0.dw.conv.weight"] == ((16, 1, 3, 3), True)  # OIHW, depthwise
    assert shapes["blocks.0.se.reduce.weight"] == ((8, 16, 1, 1), True)
    assert shapes["head.conv.weight"] == ((1024, 576, 1, 1), True)
    assert shapes["classifier.weight"] == ((10, 1024), True)
    assert shapes["stem.bn.mean"] == ((16,), False)
