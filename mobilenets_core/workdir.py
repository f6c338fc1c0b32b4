"""A workdir belongs to one run: one engine, one live training process, one recipe.

    WORKDIR/run.json   who the run is: its engine, the recipe fields that fix what it computes, and
                       the process training it (host, pid)
    the lock           the training process holds an flock on the workdir directory itself while it
                       runs; the kernel drops it when that process ends however it ends, so a dead
                       run never blocks the next, and refusing a run writes nothing

Training refuses, in one line and before anything is written:
- a second live training process on the workdir (naming the holder's pid, from the kernel's lock table);
- the other engine on a workdir that holds this run's checkpoints (their weights load anywhere:
  `--config.init.weights=WORKDIR`);
- a resume whose recipe differs in a field of `RECIPE_FIELDS`, listing each difference (old -> new);
  `--config.resume.allow=train.epochs,...` accepts the named ones on purpose, says so, and
  records them in run.json.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

from mobilenets_core.atomic_files import write_json
from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights import workdirs

RUN_FILE = "run.json"
# What a run computes: a resume that changes one of these trains another run than the one it continues.
RECIPE_SECTIONS = ("optimizer", "schedule", "loss")
RECIPE_FIELDS = ("train.batch_size", "train.epochs", "train.seed", "train.dtype", "dataset.name", "dataset.path",
                 "dataset.image_size", "model.dropout", "model.bn_decay", "init.freeze", "ema.decay",
                 "mixed_precision.level", "mixed_precision.loss_scale")


def check_writable(workdir: str) -> list:
    """Make `workdir` if need be and prove a file can be created in it; ConfigError in one line if not
    (a read-only filesystem, /proc, no permission). Returns the directories a refused run should
    remove again if it leaves them empty (`remove_if_empty`): the workdir if it was made here, and
    the engines' checkpoint directories that do not exist yet."""
    made = [] if os.path.isdir(workdir) else [workdir]
    probe = os.path.join(workdir, f".write-test-{socket.gethostname()}-{os.getpid()}")
    try:
        os.makedirs(workdir, exist_ok=True)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--workdir={workdir} cannot be written ({e.strerror or e}): training keeps its "
                          f"checkpoints, metrics.jsonl and run.json there; name a writable directory") from None
    return made + [os.path.join(workdir, d) for d in workdirs.ENGINES
                   if not os.path.exists(os.path.join(workdir, d))]


def remove_if_empty(directories: list) -> None:
    """Remove those of `directories` that are empty (sub-directories first); others stay as they are."""
    for directory in sorted(directories, key=len, reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def recipe(config) -> dict:
    """The run-defining fields of `config`, as "section.field" -> value."""
    fields = {f"{s}.{k}": config[s][k] for s in RECIPE_SECTIONS for k in config[s].keys()}
    fields.update({key: config[key.split(".")[0]][key.split(".")[1]] for key in RECIPE_FIELDS})
    return fields


def allowed_changes(config) -> list:
    """`resume.allow` as a list of fields; ConfigError naming one that is no recipe field."""
    names = [n.strip() for n in str(config.resume.allow or "").split(",") if n.strip()]
    known = recipe(config)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"resume.allow={config.resume.allow!r}: {', '.join(unknown)} is not a field a resume can "
                          f"change; the fields: {', '.join(sorted(known))}")
    return names


def read_run(workdir: str) -> dict | None:
    path = os.path.join(workdir, RUN_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            run = json.load(f)
        if not isinstance(run, dict):
            raise ValueError(f"holds {type(run).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); restore it, or delete it to adopt the workdir's "
                          f"checkpoints as this run's") from None
    return run


def owner_engine(workdir: str) -> str | None:
    """The engine whose run the workdir holds: run.json's, else the one whose checkpoints are there."""
    run = read_run(workdir)
    if run and run.get("engine"):
        return run["engine"]
    held = workdirs.holding_checkpoints(workdir)
    return workdirs.ENGINES[held[0]] if len(held) == 1 else None


def check_engine(workdir: str, engine: str, has_checkpoints: bool) -> None:
    """ConfigError when the workdir holds another engine's run (its checkpoints, not ours)."""
    owner = owner_engine(workdir)
    if owner is not None and owner != engine and not has_checkpoints:
        raise ConfigError(f"{workdir} holds a {owner} run; --backend={engine} would start another run beside it. "
                          f"Resume it with --backend={owner}, or start this one in another --workdir (its weights "
                          f"load with --config.init.weights={workdir})")


def check_recipe(workdir: str, config, step: int, say) -> dict:
    """On resume: ConfigError listing every recipe field that differs from run.json's, unless
    resume.allow names it; the allowed ones are said. Returns the run record to write."""
    allowed = allowed_changes(config)
    now = recipe(config)
    run = read_run(workdir) or {}
    before = run.get("recipe")
    if before is None:  # a workdir from before run.json: adopted with today's recipe
        return {**run, "recipe": now}
    differ = [k for k in now if k in before and before[k] != now[k]]
    refused = [k for k in differ if k not in allowed]
    if refused:
        raise ConfigError(f"{workdir} resumes from step {step} of a run with another recipe: "
                          + ", ".join(f"{k} {before[k]!r} -> {now[k]!r}" for k in refused)
                          + f". Use the run's values, another --workdir, or accept the change on purpose with "
                            f"--config.resume.allow={','.join(refused)}")
    changes = list(run.get("changes", []))
    for k in differ:
        say(f"resume.allow: {k} {before[k]!r} -> {now[k]!r} from step {step} on")
        changes.append({"step": step, "field": k, "old": before[k], "new": now[k]})
    return {**run, "recipe": {**before, **now}, "changes": changes}


def _lock_holder(workdir: str) -> int | None:
    """The pid holding the flock on `workdir`, from /proc/locks (Linux); None where it cannot be told."""
    st = os.stat(workdir)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == device:
                    return int(fields[4])
    except (OSError, ValueError):
        pass
    return None


def write_run(workdir: str, engine: str, run: dict) -> None:
    """run.json, naming this process as the one training (shown to any other that tries)."""
    process = {"host": socket.gethostname(), "pid": os.getpid(),
               "since": datetime.datetime.now().isoformat(timespec="seconds")}
    write_json(os.path.join(workdir, RUN_FILE), {**run, "engine": engine, "process": process}, indent=2)


@contextlib.contextmanager
def training_lock(workdir: str):
    """Hold the workdir while training; ConfigError naming the live owner if another process holds it."""
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(workdir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = _lock_holder(workdir)
            owner = f"pid {pid} on {socket.gethostname()}" if pid else "another process"
            raise ConfigError(f"{workdir} is in use by a training run ({owner}); wait for it to end, or use "
                              f"another --workdir") from None
        yield
    finally:
        os.close(fd)  # releases the lock
