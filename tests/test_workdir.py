"""A workdir belongs to one run: one live training process, one engine, one recipe (mobilenets_core.workdir).

Driven through the core loop with tests/test_loop.py's fake engine (no compilation), and through
the CLI for two real processes on one workdir."""
import json
import os
import subprocess
import sys
import time

import pytest

from mobilenets_core import loop
from mobilenets_core import metrics as metrics_lib
from mobilenets_core.config_check import ConfigError
from tests.test_loop import FakeEngine, config_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SavedEngine(FakeEngine):
    """A fake engine whose checkpoints outlive it, as files do: a second engine resumes the first's."""

    def __init__(self, saved=None, name="fake", **kw):
        super().__init__(**kw)
        self.name = name
        self.saved = saved if saved is not None else []


def files_of(directory) -> dict:
    return {p: open(os.path.join(directory, p), "rb").read() for p in sorted(os.listdir(directory))
            if os.path.isfile(os.path.join(directory, p))}


def test_run_json_records_the_engine_recipe_and_process(tmp_path):
    loop.train_and_evaluate(FakeEngine(), config_for(**{"train.epochs": 1}), str(tmp_path))
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["engine"] == "fake" and run["process"]["pid"] == os.getpid()
    assert run["recipe"]["train.epochs"] == 1 and run["recipe"]["optimizer.learning_rate"] == 0.05
    assert run["recipe"]["train.batch_size"] == config_for().train.batch_size


@pytest.mark.parametrize("field,value,shown", [("train.epochs", 3, "train.epochs 2 -> 3"),
                                               ("optimizer.learning_rate", 0.5, "optimizer.learning_rate 0.05 -> 0.5"),
                                               ("train.batch_size", 64, "train.batch_size 128 -> 64"),
                                               ("dataset.image_size", 40, "dataset.image_size 32 -> 40")])
def test_a_changed_recipe_is_refused_on_resume_listing_old_and_new(tmp_path, field, value, shown):
    saved = []
    loop.train_and_evaluate(SavedEngine(saved), config_for(), str(tmp_path), stop=lambda step: step == 5)
    before = files_of(tmp_path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path} resumes from step 5 of a run with another recipe: {shown}\. "
                                          rf"Use the run's values, another --workdir, or accept the change on "
                                          rf"purpose with --config.resume.allow={field}$"):
        loop.train_and_evaluate(SavedEngine(saved), config_for(**{field: value}), str(tmp_path))
    assert files_of(tmp_path) == before


def test_an_allowed_change_is_said_applied_and_recorded(tmp_path, capsys):
    saved = []
    loop.train_and_evaluate(SavedEngine(saved), config_for(), str(tmp_path), stop=lambda step: step == 5)
    engine = SavedEngine(saved)
    loop.train_and_evaluate(engine, config_for(**{"train.epochs": 3, "resume.allow": "train.epochs"}), str(tmp_path))
    assert "resume.allow: train.epochs 2 -> 3 from step 5 on" in capsys.readouterr().out
    assert engine.applied[-1] == 33  # 3 epochs of 11 steps
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["recipe"]["train.epochs"] == 3
    assert run["changes"] == [{"step": 5, "field": "train.epochs", "old": 2, "new": 3}]


def test_resume_allow_names_only_recipe_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"^resume.allow='train.epochs,eval.batch_size': eval.batch_size is not a "
                                          r"field a resume can change; the fields: "):
        loop.train_and_evaluate(FakeEngine(), config_for(**{"resume.allow": "train.epochs,eval.batch_size"}),
                                str(tmp_path))
    assert not tmp_path.joinpath("run.json").exists()


def test_the_other_engine_is_refused_on_a_workdir_it_does_not_own(tmp_path):
    saved = []
    loop.train_and_evaluate(SavedEngine(saved, name="jax"), config_for(**{"train.epochs": 1}), str(tmp_path))
    before = files_of(tmp_path)
    rows = metrics_lib.read_metrics(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"^{tmp_path} holds a jax run; --backend=mindspore would start another "
                                          rf"run beside it\. Resume it with --backend=jax, or start this one in "
                                          rf"another --workdir \(its weights load with "
                                          rf"--config.init.weights={tmp_path}\)$"):
        loop.train_and_evaluate(SavedEngine([], name="mindspore"), config_for(**{"train.epochs": 1}), str(tmp_path))
    assert files_of(tmp_path) == before and metrics_lib.read_metrics(str(tmp_path)) == rows


def test_eval_on_the_other_engines_workdir_points_at_it(tmp_path):
    (tmp_path / "ms_checkpoints").mkdir()
    (tmp_path / "ms_checkpoints" / "ckpt_4.ckpt").write_bytes(b"x")
    engine = SavedEngine([], name="jax")
    engine.checkpoint_dir = str(tmp_path / "checkpoints")
    with pytest.raises(ConfigError, match=rf"^no checkpoint in {tmp_path}/checkpoints: {tmp_path} holds a mindspore "
                                          rf"run; add --backend=mindspore, or read its weights with this engine: "
                                          rf"--config.init.weights={tmp_path}$"):
        loop.inference_step(engine, config_for())


def test_a_workdir_held_by_a_live_run_is_refused_naming_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from mobilenets_core import workdir\n"
        f"workdir.write_run({str(tmp_path)!r}, 'jax', {{}})\n"
        f"with workdir.training_lock({str(tmp_path)!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"^{tmp_path} is in use by a training run \(pid {holder.pid} on "
                                              rf"\S+\); wait for it to end, or use another --workdir$"):
            loop.train_and_evaluate(SavedEngine([], name="jax"), config_for(**{"train.epochs": 1}), str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    # the holder died without letting go: its lock went with it
    loop.train_and_evaluate(SavedEngine([], name="jax"), config_for(**{"train.epochs": 1}), str(tmp_path))
    assert json.loads((tmp_path / "run.json").read_text())["process"]["pid"] == os.getpid()


@pytest.mark.slow
def test_two_training_processes_on_one_workdir_exactly_one_trains(tmp_path):
    command = [sys.executable, "main.py", "--config=configs/mnv3_small.py", f"--workdir={tmp_path}",
               "--config.dataset.name=digits", "--config.model.width=0.5", "--config.dataset.image_size=32",
               "--config.train.epochs=1", "--config.train.batch_size=128", "--config.train.log_every_steps=1"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    results = [(run.wait(timeout=600), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes[0] == 0 and codes[1] != 0, [r[2][-500:] for r in results]
    refused = next(err for code, _, err in results if code != 0)
    assert f"{tmp_path} is in use by a training run (pid " in refused and "Traceback" not in refused
    keys = [(r["step"], r["split"]) for r in metrics_lib.read_metrics(str(tmp_path))]
    assert len(keys) == len(set(keys)) and [k for k in keys if k[1] == "eval"] == [keys[-1]]


class EvaluatedEngine(SavedEngine):
    def load_for_inference(self, step):
        return dict(self.saved)[step]


def test_eval_uses_the_checkpoints_image_size_unless_told_and_says_so(tmp_path, capsys):
    saved = []
    loop.train_and_evaluate(SavedEngine(saved), config_for(**{"train.epochs": 1}), str(tmp_path))
    config = config_for(**{"dataset.image_size": 40})
    loop.evaluate(EvaluatedEngine(saved), config, str(tmp_path))
    assert config.dataset.image_size == 32
    assert ("images at 32 px: the size checkpoint 11 was trained at (set eval.image_size for another), not "
            "dataset.image_size=40") in capsys.readouterr().out
    config = config_for(**{"dataset.image_size": 40, "eval.image_size": 48})
    loop.evaluate(EvaluatedEngine(saved), config, str(tmp_path))
    assert config.dataset.image_size == 48
    assert "images at 48 px: eval.image_size, not dataset.image_size=40" in capsys.readouterr().out


def test_a_metrics_line_that_is_no_record_is_dropped_not_fatal(tmp_path, capsys):
    saved = []
    loop.train_and_evaluate(SavedEngine(saved), config_for(), str(tmp_path), stop=lambda step: step == 5)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("42\n")
    loop.train_and_evaluate(SavedEngine(saved), config_for(), str(tmp_path))
    assert "metrics.jsonl: dropped 1 line(s) written after step 5" in capsys.readouterr().out
    assert all(isinstance(r, dict) for r in metrics_lib.read_metrics(str(tmp_path)))


def test_a_classifier_that_cannot_hold_the_classes_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"^dataset 'digits' has 10 classes \(0, 1, 2, 3, 4, \.\.\.\); "
                                          r"model.num_classes=5 cannot hold them: set model.num_classes=10$"):
        loop.train_and_evaluate(FakeEngine(), config_for(**{"model.num_classes": 5}), str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_outputs_in_the_way_or_in_no_directory_are_refused_before_work(tmp_path):
    from PIL import Image

    from mobilenets_core import export_description

    Image.new("RGB", (8, 8)).save(tmp_path / "cat.png")
    config = config_for(**{"predict.inputs": str(tmp_path / "cat.png"),
                           "predict.output": str(tmp_path / "absent" / "p.jsonl")})
    with pytest.raises(ConfigError, match=rf"^predict.output='{tmp_path}/absent/p.jsonl': the directory "
                                          rf"{tmp_path}/absent does not exist; create it first$"):
        loop.predict(EvaluatedEngine([]), config, str(tmp_path))
    (tmp_path / "export").write_text("")
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/export is a file; move it away"):
        export_description.output_dir(str(tmp_path))


class RefusingEngine(FakeEngine):
    """Opens its checkpoint store as Orbax does (making WORKDIR/checkpoints), then refuses its
    init.weights, as a real engine does when the file does not fit the network."""

    def __init__(self, workdir):
        super().__init__()
        self.checkpoint_dir = os.path.join(workdir, "checkpoints")

    def latest_step(self):
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        return None

    def start(self, steps_per_epoch, step, say):
        raise ConfigError("init.weights=w.ckpt do not fit mobilenet_v1")


def test_a_refused_run_leaves_no_empty_directories_behind(tmp_path):
    workdir = tmp_path / "new"
    with pytest.raises(ConfigError, match="do not fit"):
        loop.train_and_evaluate(RefusingEngine(str(workdir)), config_for(), str(workdir))
    assert not workdir.exists()
    workdir.mkdir()
    (workdir / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="do not fit"):
        loop.train_and_evaluate(RefusingEngine(str(workdir)), config_for(), str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]  # what was there stays


@pytest.mark.parametrize("where,reason", [("file/workdir", "Not a directory"),
                                          ("/proc/mobilenets-workdir", "No such file or directory|Permission denied")])
def test_a_workdir_that_cannot_be_written_is_one_line_before_any_work(tmp_path, where, reason):
    (tmp_path / "file").write_text("")
    workdir = where if where.startswith("/") else str(tmp_path / where)
    engine = FakeEngine()
    with pytest.raises(ConfigError, match=rf"^--workdir={workdir} cannot be written \(({reason})\): training keeps "
                                          r"its checkpoints, metrics.jsonl and run.json there; name a writable "
                                          r"directory$"):
        loop.train_and_evaluate(engine, config_for(), workdir)
    assert engine.events == [] and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_eval_on_a_read_only_workdir_prints_its_result_and_says_it_was_not_recorded(tmp_path, capsys,
                                                                                     monkeypatch):
    import errno

    saved = []
    loop.train_and_evaluate(SavedEngine(saved), config_for(**{"train.epochs": 1}), str(tmp_path))
    capsys.readouterr()

    def read_only(path, *args, **kwargs):
        if str(path).endswith("metrics.jsonl"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    real_open = open
    monkeypatch.setattr("builtins.open", read_only)
    result = loop.evaluate(EvaluatedEngine(saved), config_for(), str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert result["top1"] == 0.25
    assert out[-2].startswith("result: {'Loss': 2.0, 'Top_1_Acc': 0.25, 'Top_5_Acc': 0.5} ckpt=fake/11")
    assert out[-1] == f"(not recorded in {tmp_path}/metrics.jsonl: Read-only file system)"


def test_a_metrics_record_that_cannot_be_written_is_one_line(tmp_path):
    from mobilenets_core.failures import RunError

    (tmp_path / "metrics.jsonl").mkdir()  # in the way: what a full disk or a lost mount gives, as one OSError
    writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
    row = {"step": 4, "epoch": 1, "split": "train", "loss": 1.0, "top1": 0.5, "top5": 1.0, "lr": 0.1,
           "images_per_sec": 1.0, "step_ms": 1.0}
    with pytest.raises(RunError, match=rf"^could not write the step-4 train record to {tmp_path}/metrics.jsonl "
                                       r"\(Is a directory\); free disk space or fix the permissions of the workdir, "
                                       r"then run again to resume from the newest checkpoint$"):
        writer.write(row)
