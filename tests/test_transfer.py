"""Seed 003's workflow with one command each: fine-tune timm weights on an image folder, predict."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests import timm_reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_digit_folder(root, classes=(3, 5, 8), per_split=(30, 10)):
    """Real images: scikit-learn digits as 48x48 JPEGs in train/<class> and validation/<class>."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, count in zip(("train", "validation"), per_split):
        for c in classes:
            indices = np.flatnonzero(digits.target == c)
            chosen = indices[:count] if split == "train" else indices[-count:]
            folder = root / split / f"digit_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
                Image.fromarray(pixels).convert("RGB").resize((48, 48)).save(folder / f"{i}.jpg", quality=95)


def run_main(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """A timm mobilenetv3_large_075 state dict (10 classes) as a .safetensors file."""
    from safetensors.numpy import save_file

    keys, _, _ = ref.load_fixture(os.path.join(ROOT, "tests", "fixtures", "timm_mobilenetv3_large_075.npz"))
    path = str(tmp_path_factory.mktemp("timm") / "mobilenetv3_large_075.safetensors")
    save_file(ref.random_state(keys), path)
    return path


@pytest.mark.slow  # 1.5-2 minutes on 2 cores
def test_fine_tune_timm_weights_on_a_folder_then_predict(tmp_path, timm_weights):
    write_digit_folder(tmp_path / "photos")
    common = ["--config=configs/mnv3_transfer.py", f"--workdir={tmp_path / 'run'}",
              f"--config.dataset.path={tmp_path / 'photos'}", "--config.model.width=0.75",
              "--config.dataset.image_size=32"]
    out = run_main(*common, f"--config.init.weights={timm_weights}", "--config.train.epochs=2")
    assert "using its profile model.num_classes=3" in out  # the recipe says 2; the folder has 3
    assert f"initialised from timm state dict {timm_weights}" in out
    assert "classifier re-initialised for 3 classes (the file has 10)" in out
    assert "epoch 2: epoch time" in out
    out = run_main(*common, "--mode=predict", f"--config.predict.inputs={tmp_path / 'photos' / 'validation'}",
                   f"--config.predict.output={tmp_path / 'pred.jsonl'}")
    predictions = [json.loads(line) for line in open(tmp_path / "pred.jsonl")]
    assert len(predictions) == 30
    assert all(sorted(t["class"] for t in p["top"]) == ["digit_3", "digit_5", "digit_8"] for p in predictions)
    assert all(abs(sum(t["probability"] for t in p["top"]) - 1) < 1e-6 for p in predictions)
    first = predictions[0]
    assert f"{first['image']}: {first['top'][0]['class']} {first['top'][0]['probability']:.3f}" in out


def test_predict_without_inputs_says_how(tmp_path):
    result = subprocess.run([sys.executable, "main.py", "--config=configs/mnv3_small.py", f"--workdir={tmp_path}",
                             "--config.dataset.name=digits", "--mode=predict"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    assert "error: --mode=predict needs --config.predict.inputs=FILE_OR_DIR_OR_GLOB" in result.stderr


@pytest.mark.slow
def test_mindspore_fine_tunes_and_predicts_what_jax_predicts_with_its_weights(tmp_path, timm_weights):
    """Seed 003 on the MindSpore engine; its checkpoint, moved through the canonical format, gives the
    JAX engine the same predictions."""
    write_digit_folder(tmp_path / "photos")
    run = tmp_path / "ms_run"
    common = ["--config=configs/mnv3_transfer.py", f"--workdir={run}", f"--config.dataset.path={tmp_path / 'photos'}",
              "--config.model.width=0.75", "--config.dataset.image_size=32"]
    out = run_main(*common, "--backend=mindspore", f"--config.init.weights={timm_weights}", "--config.train.epochs=1")
    assert f"initialised from timm state dict {timm_weights}" in out
    assert "classifier re-initialised for 3 classes (the file has 10)" in out
    inputs = f"--config.predict.inputs={tmp_path / 'photos' / 'validation'}"
    run_main(*common, "--backend=mindspore", "--mode=predict", inputs, f"--config.predict.output={tmp_path / 'ms.jsonl'}")
    ckpt = sorted((run / "ms_checkpoints").glob("*.ckpt"))[-1]
    canonical_file = tmp_path / "ms_weights.safetensors"
    run_main(*common, "--mode=convert", f"--config.init.weights={ckpt}", f"--config.convert.output={canonical_file}")
    run_main(*common, "--backend=jax", "--mode=predict", inputs, f"--config.init.weights={canonical_file}",
             f"--config.predict.output={tmp_path / 'jax.jsonl'}")
    ms_pred = [json.loads(line) for line in open(tmp_path / "ms.jsonl")]
    jax_pred = [json.loads(line) for line in open(tmp_path / "jax.jsonl")]
    assert len(ms_pred) == len(jax_pred) == 30
    for a, b in zip(ms_pred, jax_pred):
        assert a["image"] == b["image"]
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        np.testing.assert_allclose([t["probability"] for t in a["top"]], [t["probability"] for t in b["top"]],
                                   atol=1e-4)


@pytest.mark.slow
def test_timm_weights_evaluate_the_same_through_both_engines_cli(tmp_path, timm_weights):
    """`--mode=eval --config.init.weights=<timm file>` with no checkpoint: the same validation loss
    and Top-1 on both engines (the logits themselves equal timm's: tests/test_timm_parity.py)."""
    write_digit_folder(tmp_path / "photos")
    common = ["--config=configs/mnv3_transfer.py", f"--config.dataset.path={tmp_path / 'photos'}",
              "--config.model.width=0.75", "--config.dataset.image_size=32", "--config.model.num_classes=10",
              f"--config.init.weights={timm_weights}", "--mode=eval"]
    results = {}
    for backend in ("jax", "mindspore"):
        out = run_main(*common, f"--workdir={tmp_path / backend}", f"--backend={backend}")
        line = next(line for line in out.splitlines() if line.startswith("result: "))
        assert line.endswith(f"ckpt={timm_weights}")
        rows = [json.loads(r) for r in open(tmp_path / backend / "metrics.jsonl")]
        results[backend] = rows[-1]
    assert results["jax"]["top1"] == results["mindspore"]["top1"]
    assert results["jax"]["loss"] == pytest.approx(results["mindspore"]["loss"], rel=1e-5)
