"""main.py: --mode=summary prints the reference counts on both engines; config mistakes are one line."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = json.load(open(os.path.join(ROOT, "tests", "fixtures", "reference_counts.json")))
TIMM, MINDCV = REFERENCE["timm"]["models"], REFERENCE["mindcv"]["models"]


def run_main(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


# recipe (+ overrides) -> the reference model whose parameter count and MACs it must print
CASES = [
    (["--config=configs/mnv3_small.py"], TIMM["mobilenetv3_small_100"]),
    (["--config=configs/mnv3_small.py", "--config.model.width=0.75"], TIMM["mobilenetv3_small_075"]),
    (["--config=configs/mnv3_large.py"], TIMM["mobilenetv3_large_100"]),
    (["--config=configs/mnv3_large.py", "--config.model.width=0.75"], TIMM["mobilenetv3_large_075"]),
    (["--config=configs/mnv1.py"], TIMM["mobilenetv1_100"]),
    (["--config=configs/mnv1.py", "--config.model.width=0.5"], TIMM["mobilenetv1_050"]),
    (["--config=configs/shufflenet_v1.py"], MINDCV["shufflenet_v1_g3_20"]),
    (["--config=configs/shufflenet_v1.py", "--config.model.width=1.0", "--config.model.groups=8"],
     MINDCV["shufflenet_v1_g8_10"]),
    (["--config=configs/mnv2.py"], TIMM["mobilenetv2_100"]),
    (["--config=configs/mnv4.py:conv_small"], TIMM["mobilenetv4_conv_small"]),
    (["--config=configs/mnv2.py:140"], TIMM["mobilenetv2_140"]),
    (["--config=configs/mnv4.py:conv_small", "--config.model.width=0.5"], TIMM["mobilenetv4_conv_small_050"]),
    # reference MACs are at 224 px; the recipe's own size is 256 / 384
    (["--config=configs/mnv4.py:conv_medium", "--config.dataset.image_size=224"], TIMM["mobilenetv4_conv_medium"]),
    (["--config=configs/mnv4.py:conv_large", "--config.dataset.image_size=224"], TIMM["mobilenetv4_conv_large"]),
    (["--config=configs/mnv4.py:hybrid_medium", "--config.dataset.image_size=224"], TIMM["mobilenetv4_hybrid_medium"]),
    (["--config=configs/mnv4.py:hybrid_medium", "--config.dataset.image_size=224", "--config.model.width=0.75"],
     TIMM["mobilenetv4_hybrid_medium_075"]),
    (["--config=configs/mnv4.py:hybrid_large", "--config.dataset.image_size=224"], TIMM["mobilenetv4_hybrid_large"]),
    (["--config=configs/mnv4.py:hybrid_large", "--config.dataset.image_size=224", "--config.model.width=0.75"],
     TIMM["mobilenetv4_hybrid_large_075"]),
]
QUICK = (0, 6, 8, 9)  # one MobileNetV3, ShuffleNetV1, MobileNetV2 and MobileNetV4 recipe in the quick suite


@pytest.mark.parametrize("args,reference", [CASES[i] for i in QUICK] + [pytest.param(*c, marks=pytest.mark.slow) for i, c in enumerate(CASES) if i not in QUICK], ids=lambda v: " ".join(v)[9:] if isinstance(v, list) else "")
def test_summary_prints_reference_counts_on_both_engines(args, reference):
    lines = {}
    for backend in ("jax", "mindspore"):
        result = run_main(*args, f"--backend={backend}", "--mode=summary")
        assert result.returncode == 0, result.stderr[-2000:]
        lines[backend] = json.loads(result.stdout.strip().splitlines()[-1])
    for backend, summary in lines.items():
        assert summary["backend"] == backend
        assert summary["params"] == reference["params"]
        assert summary["macs"] == reference["macs"]
        assert summary["input_shape"] == [1, 224, 224, 3]
    assert {k: v for k, v in lines["jax"].items() if k != "backend"} == \
        {k: v for k, v in lines["mindspore"].items() if k != "backend"}


def test_cifar10_variant_of_mnv1_has_ten_classes():
    result = run_main("--config=configs/mnv1.py:cifar10", "--mode=summary")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["params"] == TIMM["mobilenetv1_100"]["params_num_classes_10"]


@pytest.mark.parametrize("args,message", [
    (["--config.model.widht=0.5"],
     "error: unknown config key 'model.widht' (did you mean model.width?); valid keys in model: bn_decay, bn_eps, "
     "conv_impl, convention, dropout, groups, name, num_classes, variant, width"),
    (["--config.modle.width=0.5"], "error: unknown config key 'modle.width' (did you mean model?); valid keys in the config:"),
    (["--config.model.width=0.35"],
     "error: model.width=0.35 is not supported for mobilenet_v3_small; supported widths: 0.5, 0.75, 1.0"),
    (["--config.model.width=abc"], "could not convert string to float: 'abc'"),
    (["--config.model.name=shufflenet_v1", "--config.model.groups=5"],
     "error: model.groups=5 is not supported for shufflenet_v1; supported groups: 1, 2, 3, 4, 8"),
    (["--backend=torch"], "--backend"),
    (["--config.model.name=mobilenet_v4", "--config.model.variant=conv_tiny"],
     "error: model.variant='conv_tiny' is not a mobilenet_v4 variant; choose one of conv_small, conv_medium, "
     "conv_large, hybrid_medium, hybrid_large"),
])
def test_config_mistakes_are_one_clear_line(args, message):
    result = run_main("--config=configs/mnv3_small.py", "--mode=summary", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_digits_profile_applies_unless_overridden():
    result = run_main("--config=configs/mnv3_small.py", "--mode=summary", "--config.dataset.name=digits")
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["params"] == TIMM["mobilenetv3_small_100"]["params_num_classes_10"]
    assert summary["input_shape"] == [1, 32, 32, 3]
    result = run_main("--config=configs/mnv3_small.py", "--mode=summary", "--config.dataset.name=digits",
                      "--config.dataset.image_size=64")
    assert json.loads(result.stdout.strip().splitlines()[-1])["input_shape"] == [1, 64, 64, 3]


@pytest.mark.slow  # ~55 s on 2 cores: two main.py processes, a whole training run
def test_train_then_eval_reproduces_the_final_top1(tmp_path):
    common = ["--config=configs/mnv3_small.py", f"--workdir={tmp_path}", "--config.dataset.name=digits",
              "--config.model.width=0.5", "--config.train.epochs=2"]
    trained = run_main(*common)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "dataset digits: using its profile model.num_classes=10" in trained.stdout
    assert "epoch 2: epoch time: " in trained.stdout and ", avg loss: " in trained.stdout
    final = [line for line in trained.stdout.splitlines() if line.startswith("result: ")][-1]
    evaluated = run_main(*common, "--mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert [line for line in evaluated.stdout.splitlines() if line.startswith("result: ")] == [final]
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert records[-1]["split"] == "eval" and records[-1]["mode"] == "eval"
    assert records[-1]["top1"] == records[-2]["top1"]


def test_eval_without_a_checkpoint_says_what_to_do(tmp_path):
    result = run_main("--config=configs/mnv3_small.py", f"--workdir={tmp_path}", "--config.dataset.name=digits",
                      "--mode=eval")
    assert result.returncode != 0
    assert f"error: no checkpoint in {tmp_path}/checkpoints; train first" in result.stderr


def test_recipe_workdir_and_output_mistakes_are_one_line_and_write_nothing(tmp_path):
    (tmp_path / "norecipe.py").write_text("x = 1\n")
    (tmp_path / "afile").write_text("")
    weights = str(tmp_path / "w.safetensors")
    from mobilenets_core import specs
    from mobilenets_core.weights import ModelInfo, save
    from tests.helpers import random_canonical_state
    info = ModelInfo("mobilenet_v3_small", 1.0, None, 10, 1e-5)
    save(weights, random_canonical_state(specs.build_architecture(info.name, 1.0, None, 10)), info)
    convert = ["--config=configs/mnv3_small.py", "--mode=convert", f"--config.init.weights={weights}"]
    cases = [
        ([f"--config={tmp_path}/norecipe.py", "--mode=summary"],
         f"error: --config={tmp_path}/norecipe.py: {tmp_path}/norecipe.py defines no get_config(); a recipe returns "
         f"its ConfigDict from get_config(arg=None)"),
        (["--config=configs/mnv3_small.py:nope", "--mode=summary"],
         "error: --config=configs/mnv3_small.py:nope: ValueError: mnv3_small has no variants (got 'nope'); use "
         "--config=configs/mnv3_small.py"),
        (["--config=configs/mnv3_small.py", "--mode=eval", f"--workdir={tmp_path}/afile"],
         f"error: --workdir={tmp_path}/afile is a file, not a directory"),
        (convert + [f"--config.convert.output={tmp_path}/model.pth"],
         f"error: convert.output='{tmp_path}/model.pth': .pth is not a format written here; name a .safetensors"),
        (convert + [f"--config.convert.output={tmp_path}/absent/model.ckpt"],
         f"error: convert.output='{tmp_path}/absent/model.ckpt': the directory {tmp_path}/absent does not exist; "
         f"create it first"),
        (["--config=configs/mnv3_small.py", "--mode=summary", "--config.model.num_classes=1"],
         "error: model.num_classes=1 must be at least 2"),
        (["--config=configs/mnv3_small.py", "--mode=summary", "--config.eval.image_size=16"],
         "error: eval.image_size=16 is too small; use 32 or more"),
    ]
    for args, message in cases:
        result = run_main(*args)
        assert result.returncode != 0 and result.stderr.strip().splitlines() == [result.stderr.strip()], args
        assert result.stderr.startswith(message), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "norecipe.py", "w.safetensors"]
