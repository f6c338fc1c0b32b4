"""--mode=bench on both engines (one JSON record, no TensorFlow, nothing written) and the
benchmark script's table arithmetic. No timing is asserted: only keys, shapes and sanity."""
import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import compare
from mobilenets_core import huge_pages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/mnv1.py", "--config.model.width=0.25", "--config.model.num_classes=10",
        "--config.dataset.image_size=32", "--config.bench.batch_size=4", "--config.bench.warmup_steps=1",
        "--config.bench.steps=2", "--config.bench.repeats=2"]
KEYS = {"model", "backend", "device", "batch_size", "image_size", "dtype", "train_images_per_sec",
        "infer_images_per_sec", "step_ms", "peak_memory"}

# Runs main.py in this interpreter, then reports which heavy frameworks it imported.
RUN_MAIN = """
import runpy, sys
sys.argv = ["main.py"] + sys.argv[1:]
try:
    runpy.run_path("main.py", run_name="__main__")
finally:
    print("IMPORTED " + " ".join(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "mindspore", "torch"})))
"""


def run_main(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", GLOG_v="3")
    return subprocess.run([sys.executable, "-c", RUN_MAIN, *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=timeout)


def bench_record(result):
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 1, result.stdout
    imported = [line for line in result.stdout.splitlines() if line.startswith("IMPORTED")][0].split()[1:]
    return records[0], imported


@pytest.mark.parametrize("backend", ["jax", "mindspore"])
def test_bench_prints_one_record_without_tensorflow_and_writes_nothing(backend, tmp_path):
    before = sorted(os.listdir(ROOT))
    record, imported = bench_record(run_main(*TINY, f"--backend={backend}", "--mode=bench"))
    assert KEYS <= set(record)
    assert (record["model"], record["backend"], record["batch_size"], record["image_size"]) == \
        ("mobilenet_v1", backend, 4, 32)
    assert record["dtype"] == "float32"
    for key in ("train_images_per_sec", "infer_images_per_sec", "step_ms"):
        assert math.isfinite(record[key]) and record[key] > 0, key
    assert record["train_images_per_sec"] == pytest.approx(4 / (record["step_ms"] / 1000), rel=0.02)
    assert record["peak_memory"] > 2**20
    assert (record["warmup_steps"], record["steps"], record["repeats"]) == (1, 2, 2)
    assert "tensorflow" not in imported  # the GPU machines have no TensorFlow
    assert ("mindspore" in imported) == (backend == "mindspore")
    if backend == "jax" and huge_pages.applies():  # main.py restarted onto huge pages (MindSpore never does)
        assert record["malloc_huge_pages"] is True
    assert sorted(os.listdir(ROOT)) == before


@pytest.mark.parametrize("backend", ["jax", "mindspore"])
def test_bench_fed_by_an_image_folder_reports_both_figures_without_tensorflow(backend, tmp_path):
    from PIL import Image

    for i in range(12):
        folder = tmp_path / "photos" / "train" / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 72), (20 * i, 100, 200)).save(folder / f"{i}.jpg")
    (tmp_path / "photos" / "validation").mkdir()
    record, imported = bench_record(run_main(*TINY, f"--backend={backend}", "--mode=bench", "--config.bench.data=folder",
                                             f"--config.dataset.path={tmp_path / 'photos'}"))
    assert record["data"] == "folder" and record["data_ms"] >= 0
    assert record["train_images_per_sec"] == pytest.approx(4 / (record["fed_step_ms"] / 1000), rel=0.02)
    assert record["synthetic_train_images_per_sec"] > 0
    assert record["fed_vs_synthetic"] == pytest.approx(
        record["train_images_per_sec"] / record["synthetic_train_images_per_sec"], rel=0.02)
    assert "tensorflow" not in imported


@pytest.mark.parametrize("override,message", [
    ("--config.bench.steps=0", "error: bench.steps=0 must be at least 1"),
    ("--config.bench.warmup_steps=-1", "error: bench.warmup_steps=-1 must not be negative"),
    ("--config.model.conv_impl=cudnn", "error: model.conv_impl='cudnn' is not one of: 'auto', 'fast', 'xla'"),
])
def test_bench_settings_are_checked_before_any_work(override, message):
    result = run_main(*TINY, "--mode=bench", override, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message


def _record(family, engine, round_index, train, infer):
    return {"family": family, "engine": engine, "round": round_index, "model": family, "train_images_per_sec": train,
            "infer_images_per_sec": infer, "peak_memory": 2**30, "step_ms": 32000 / train}


def test_compare_takes_medians_over_rounds_and_same_round_ratios():
    records = [_record("mobilenet_v1", "jax", 0, 60.0, 200.0), _record("mobilenet_v1", "timm", 0, 50.0, 100.0),
               _record("mobilenet_v1", "jax", 1, 70.0, 210.0), _record("mobilenet_v1", "timm", 1, 70.0, 110.0),
               _record("mobilenet_v1", "jax", 2, 66.0, 190.0), _record("mobilenet_v1", "timm", 2, 60.0, 90.0),
               {"family": "mobilenet_v1", "engine": "mindspore", "round": 0, "error": "exit 1"}]
    rows = {r["engine"]: r for r in compare.summarize(records, ["mobilenet_v1"], ["jax", "mindspore", "timm"])}
    assert sorted(rows) == ["jax", "timm"]  # a failed measurement leaves no row
    jax_row = rows["jax"]
    assert (jax_row["train"], jax_row["train_min"], jax_row["train_max"], jax_row["infer"]) == (66.0, 60.0, 70.0, 200.0)
    assert jax_row["peer"] == "timm"
    assert jax_row["train_ratio"] == pytest.approx(66.0 / 60.0)
    assert jax_row["infer_ratio"] == pytest.approx(200.0 / 100.0)
    assert jax_row["train_ratio_range"] == pytest.approx((1.0, 1.2))
    assert "train_ratio" not in rows["timm"]


def test_compare_measures_jax_against_mindcv_where_timm_has_no_such_model():
    records = [_record("shufflenet_v1", "jax", 0, 30.0, 120.0), _record("shufflenet_v1", "mindcv", 0, 24.0, 100.0),
               _record("shufflenet_v1", "mindspore", 0, 27.0, 110.0)]
    rows = {r["engine"]: r for r in compare.summarize(records, ["shufflenet_v1"], ["jax", "mindspore", "mindcv"])}
    assert (rows["jax"]["peer"], rows["mindspore"]["peer"]) == ("mindcv", "mindcv")
    assert rows["jax"]["train_ratio"] == pytest.approx(1.25)
    assert rows["mindspore"]["infer_ratio"] == pytest.approx(1.1)


def test_compare_reports_mindspore_against_mindcv_also_at_the_same_onednn_limit():
    records = [_record("mobilenet_v1", "mindspore", 0, 30.0, 120.0), _record("mobilenet_v1", "mindcv", 0, 6.0, 20.0),
               _record("mobilenet_v1", "mindcv-avx2", 0, 25.0, 100.0)]
    engines = ["mindspore", "mindcv", "mindcv-avx2"]
    rows = {r["engine"]: r for r in compare.summarize(records, ["mobilenet_v1"], engines)}
    assert rows["mindspore"]["train_ratio"] == pytest.approx(5.0)  # the peer as users run it
    assert (rows["mindspore"]["same_isa_train_ratio"], rows["mindspore"]["same_isa_infer_ratio"]) == \
        pytest.approx((1.2, 1.2))
    args = compare.parse_args(["--families", "mobilenet_v1"])
    capped, plain = compare.command("mindcv-avx2", "mobilenet_v1", args), compare.command("mindcv", "mobilenet_v1", args)
    assert capped == ["env", "ONEDNN_MAX_CPU_ISA=AVX2"] + plain
    table = compare.markdown(list(rows.values()), compare.machine_info(), ["compare.py"], "now", ("0", "0"), args)
    assert "mindspore 1.20x mindcv-avx2 in training, 1.20x in inference" in table


def test_compare_varies_which_engine_runs_first_and_which_runs_before_which():
    engines = ["jax", "mindspore", "timm", "mindcv"]
    orders = [compare.engine_order(engines, r) for r in range(4)]
    assert all(sorted(order) == sorted(engines) for order in orders)
    assert orders[0] == engines and orders[1] == ["mindspore", "jax", "mindcv", "timm"]
    assert sorted(order[0] for order in orders) == ["jax", "mindcv", "mindspore", "timm"]
    before_mindspore = {order[order.index("mindspore") - 1] for order in orders if order[0] != "mindspore"}
    assert len(before_mindspore) >= 2  # a plain rotation puts JAX before MindSpore in every round


def test_compare_runs_every_engine_of_a_family_with_the_same_settings():
    args = compare.parse_args(["--families", "shufflenet_v1", "--batch", "8", "--size", "64"])
    jax_cmd, ms_cmd = compare.command("jax", "shufflenet_v1", args), compare.command("mindspore", "shufflenet_v1", args)
    assert compare.command("timm", "shufflenet_v1", args) is None  # timm has no ShuffleNetV1
    mindcv_cmd = compare.command("mindcv", "shufflenet_v1", args)
    for cmd in (jax_cmd, ms_cmd, mindcv_cmd):
        assert cmd[cmd.index("--batch") + 1] == "8" and cmd[cmd.index("--size") + 1] == "64"
    assert jax_cmd[jax_cmd.index("--groups") + 1] == "3" and "shufflenet_v1_g3_10" in mindcv_cmd


@pytest.mark.slow
def test_gpu_script_smoke_runs_its_jax_path_on_the_cpu_and_writes_its_tables(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, SMOKE_RESULTS=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(["bash", "benchmarks/gpu.sh", "--smoke"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    tables = sorted(p.name for p in tmp_path.iterdir())
    assert len(tables) == 3 and tables[0].startswith("smoke_gpu_"), tables
    records, table, data = (tmp_path / name for name in tables)  # .jsonl, .md, _data.jsonl in name order
    (record,) = [json.loads(line) for line in records.read_text().splitlines()]
    assert "error" not in record, record
    assert (record["engine"], record["backend"], record["dtype"], record["batch_size"]) == ("jax", "jax", "bfloat16", 2)
    assert record["train_images_per_sec"] > 0 and record["infer_images_per_sec"] > 0
    assert "| shufflenet_v1 | jax | " in table.read_text() and "bfloat16" in table.read_text()
    rates = [json.loads(line) for line in data.read_text().splitlines()]
    assert [(r["pipeline"], r["workers"], r["images"]) for r in rates] == [("ours", 1, 16), ("ours", 2, 16)]


def test_gpu_script_refuses_unknown_arguments_in_one_line():
    result = subprocess.run(["bash", "benchmarks/gpu.sh", "--nope"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == "usage: bash benchmarks/gpu.sh [--download-wheels | --smoke]\n"
