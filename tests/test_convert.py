"""--mode=convert: one command turns any supported weight file into any other, losslessly."""
import os
import subprocess
import sys

import numpy as np

from mobilenets_core import specs, weights
from mobilenets_core.weights import mindspore_ckpt
from mobilenets_core.weights import timm as timm_format
from tests import timm_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(*args):
    result = subprocess.run([sys.executable, "main.py", "--config=configs/mnv3_small.py", "--mode=convert",
                             "--config.model.width=0.75", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    return result


def test_timm_to_canonical_to_mindspore_to_jax_to_timm_is_lossless(tmp_path):
    from safetensors.numpy import load_file, save_file

    keys, _, _ = ref.load_fixture(os.path.join(ROOT, "tests", "fixtures", "timm_mobilenetv3_small_075.npz"))
    timm_state = ref.random_state(keys)
    save_file(timm_state, str(tmp_path / "timm.safetensors"))
    chain = [("timm.safetensors", "canonical.safetensors", []), ("canonical.safetensors", "model.ckpt", []),
             ("model.ckpt", "jaxrun", []), ("jaxrun", "back.safetensors", ["--config.convert.format=timm"])]
    for source, target, extra in chain:
        result = convert(f"--config.init.weights={tmp_path / source}", f"--config.convert.output={tmp_path / target}",
                         *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "10 classes" in result.stdout
    _, info = weights.load(str(tmp_path / "canonical.safetensors"))
    assert info == weights.ModelInfo("mobilenet_v3_small", 0.75, None, 10, 1e-5)
    assert "blocks.3.dw.bn.moving_variance" in mindspore_ckpt.read(str(tmp_path / "model.ckpt"))
    back = load_file(str(tmp_path / "back.safetensors"))
    assert sorted(back) == sorted(k for k in timm_state)
    for key, value in timm_state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_mindspore_checkpoint_written_here_loads_in_mindspore(tmp_path):
    import mindspore as ms

    arch = specs.build_architecture("mobilenet_v3_small", 0.75, None, 10)
    from tests.helpers import random_canonical_state
    state = random_canonical_state(arch)
    weights.save(str(tmp_path / "c.safetensors"), state, weights.ModelInfo("mobilenet_v3_small", 0.75, None, 10, 1e-5))
    assert convert(f"--config.init.weights={tmp_path / 'c.safetensors'}",
                   f"--config.convert.output={tmp_path / 'm.ckpt'}").returncode == 0
    loaded = ms.load_checkpoint(str(tmp_path / "m.ckpt"))
    np.testing.assert_array_equal(loaded["blocks.3.dw.bn.gamma"].asnumpy(), state["blocks.3.dw.bn.scale"])


def test_a_file_of_another_model_is_refused_and_nothing_written(tmp_path):
    arch = specs.build_architecture("mobilenet_v3_small", 1.0, None, 10)
    from safetensors.numpy import save_file

    from tests.helpers import random_canonical_state
    save_file(timm_format.to_timm(random_canonical_state(arch), arch), str(tmp_path / "wide.safetensors"))
    result = convert(f"--config.init.weights={tmp_path / 'wide.safetensors'}",
                     f"--config.convert.output={tmp_path / 'out.ckpt'}")
    assert result.returncode != 0
    assert "timm weights do not fit mobilenet_v3_small width=0.75" in result.stderr or "shape mismatch" in result.stderr
    assert not (tmp_path / "out.ckpt").exists()
