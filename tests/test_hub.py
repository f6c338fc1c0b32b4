"""init.weights=hf-hub:timm/<model>.<tag>: resolved through a local Hugging Face cache the tests
build, offline (HF_HUB_OFFLINE=1): read like the timm file it is, or refused in one line."""
import os
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub import constants
from safetensors.numpy import save_file

from mobilenets_core import specs
from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights import ModelInfo, hub, reader
from mobilenets_core.weights import timm as timm_format
from tests.helpers import random_canonical_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = "timm/mobilenetv3_small_050.test_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(home, state, arch) -> str:
    """HF_HOME with `REPO` cached as huggingface_hub lays it out: refs/main -> snapshots/COMMIT/."""
    repo_dir = os.path.join(home, "hub", "models--" + REPO.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", COMMIT)
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo_dir, "refs"))
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(COMMIT)
    save_file(timm_format.to_timm(state, arch), os.path.join(snapshot, "model.safetensors"))
    return os.path.join(home, "hub")


@pytest.fixture
def cached(tmp_path, monkeypatch):
    arch = specs.build_architecture("mobilenet_v3_small", 0.5, None, 1000)
    state = random_canonical_state(arch, seed=2)
    cache = hub_cache(str(tmp_path / "hf"), state, arch)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache, state


def test_a_cached_hub_name_reads_as_its_timm_file_offline(cached):
    cache, state = cached
    weights = reader.read(f"hf-hub:{REPO}", ModelInfo("mobilenet_v3_small", 0.5, None, 10, 1e-5))
    assert weights.path == os.path.join(cache, "models--timm--mobilenetv3_small_050.test_in1k", "snapshots",
                                        COMMIT, "model.safetensors")
    assert weights.kind == "timm state dict" and weights.info.num_classes == 1000
    assert sorted(weights.state) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(weights.state[name], value, err_msg=name)


def test_hub_names_that_cannot_be_resolved_are_one_line(cached):
    cache, _ = cached
    wanted = ModelInfo("mobilenet_v3_small", 0.5, None, 10, 1e-5)
    cases = {
        "hf-hub:timm/mobilenetv3_small_100.lamb_in1k":
            f"init.weights='hf-hub:timm/mobilenetv3_small_100.lamb_in1k' is not in the Hugging Face cache ({cache}) "
            f"and HF_HUB_OFFLINE is set; download it once online (hf download timm/mobilenetv3_small_100.lamb_in1k), "
            f"or give a local file",
        f"hf-hub:{REPO}@v2":
            f"init.weights='hf-hub:{REPO}@v2' is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set; "
            f"download it once online (hf download {REPO} --revision v2), or give a local file",
        "hf-hub:mobilenetv3_small_100":
            "init.weights='hf-hub:mobilenetv3_small_100' is not a Hub model name; write hf-hub:OWNER/REPO, e.g. "
            "hf-hub:timm/mobilenetv3_small_100.lamb_in1k",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            reader.read(name, wanted)
        assert str(caught.value) == message
    # the file is there, but of another network: the reader's own check, naming the cached file
    with pytest.raises(ConfigError, match=r"do not fit mobilenet_v3_small width=1.0"):
        reader.read(f"hf-hub:{REPO}", ModelInfo("mobilenet_v3_small", 1.0, None, 10, 1e-5))
    assert hub.is_hub_name(f"hf-hub:{REPO}") and not hub.is_hub_name("weights/hf-hub.safetensors")


def test_convert_from_a_hub_name_offline_and_refusal_when_not_cached(tmp_path):
    arch = specs.build_architecture("mobilenet_v3_small", 0.5, None, 1000)
    hub_cache(str(tmp_path / "hf"), random_canonical_state(arch, seed=3), arch)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
    common = [sys.executable, "main.py", "--config=configs/mnv3_small.py", "--mode=convert",
              "--config.model.width=0.5", "--config.model.num_classes=1000"]
    out = tmp_path / "w.safetensors"
    done = subprocess.run(common + [f"--config.init.weights=hf-hub:{REPO}", f"--config.convert.output={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.exists()
    refused = subprocess.run(common + ["--config.init.weights=hf-hub:timm/mobilenetv3_small_050.other",
                                       f"--config.convert.output={tmp_path / 'x.safetensors'}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and not (tmp_path / "x.safetensors").exists()
    last = refused.stderr.strip().splitlines()[-1]
    assert "init.weights='hf-hub:timm/mobilenetv3_small_050.other' is not in the Hugging Face cache" in last
    assert "Traceback" not in refused.stderr
