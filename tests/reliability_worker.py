"""A training run in its own process, for tests that interrupt it (tests/test_reliability.py).

    python tests/reliability_worker.py DATA WORKDIR OVERRIDES_JSON [--kill-in-save=STEP] [--seconds-per-batch=S]
                                       [--backend=mindspore]

trains `reliability_config(DATA, OVERRIDES)` in WORKDIR with the JAX engine (or the MindSpore one),
and prints one line `exit step=<n>` when train_and_evaluate returns. With --kill-in-save=STEP the
process SIGKILLs itself inside the save of checkpoint STEP, after every file of it is written and
before it is committed: JAX, before Orbax renames `<STEP>.orbax-checkpoint-tmp` to `<STEP>`;
MindSpore, before `.tmp-<STEP>-<pid>.ckpt` is renamed to `ckpt_<STEP>.ckpt`. The worst moment to die.
With --seconds-per-batch=S every training batch arrives S seconds late, so that a test which signals
the run after it logged step n knows the step the signal lands in (a step of this tiny program takes
a few tens of milliseconds, less than the test's polling of metrics.jsonl).
JAX_COMPILATION_CACHE_DIR in the environment lets the JAX runs share compiled programs.
"""
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

CLASSES, TRAIN_PER_CLASS, VALIDATION_PER_CLASS = 4, 32, 8


def write_tiny_folder(root: str) -> str:
    """train/ and validation/ of 4 classes of 32x32 PNG digits (128 + 32 images); returns root."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    counts = {}
    for image, label in zip(digits.images, digits.target):
        if label >= CLASSES:
            continue
        n = counts.get(label, 0)
        if n >= TRAIN_PER_CLASS + VALIDATION_PER_CLASS:
            continue
        counts[label] = n + 1
        split = "train" if n < TRAIN_PER_CLASS else "validation"
        folder = os.path.join(root, split, f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        pixels = np.round(image * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.NEAREST).save(os.path.join(folder, f"{n:03d}.png"))
    return root


def reliability_config(data: str, overrides: dict | None = None):
    """MobileNetV1 0.25 at 32 px on the tiny folder: 4 steps of 32 per epoch, 3 epochs, a checkpoint
    and a metrics line at every step's end where asked; the same program in every test that uses it."""
    from tests.helpers import tiny_train_config

    config = tiny_train_config(**{"model.name": "mobilenet_v1", "model.width": 0.25, "model.num_classes": CLASSES,
                                  "train.batch_size": 32, "train.epochs": 3, "train.log_every_steps": 1,
                                  "eval.batch_size": 32, "eval.every_epochs": 3, "checkpoint.keep": 10})
    config.dataset.name, config.dataset.path = "folder", data
    for key, value in (overrides or {}).items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def kill_inside_save(step: int) -> None:
    """SIGKILL this process when Orbax is about to commit checkpoint `step`."""
    from orbax.checkpoint._src.path import atomicity

    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        if self.get_final().name == str(step):
            print(f"killing myself inside the save of step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def kill_inside_mindspore_save(step: int) -> None:
    """SIGKILL this process when the MindSpore engine is about to rename its finished temporary
    file to checkpoint `step` (mobilenets_ms.checkpoints commits with os.replace, the .ckpt last)."""
    replace, final = os.replace, f"ckpt_{step}.ckpt"

    def replace_or_die(src, dst, *args, **kwargs):
        if os.path.basename(str(dst)) == final and os.path.dirname(str(dst)).endswith("ms_checkpoints"):
            print(f"killing myself inside the save of step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, *args, **kwargs)

    os.replace = replace_or_die  # the whole worker process; only that destination kills


def slow_batches(seconds: float) -> None:
    """Every training batch of this process arrives `seconds` late."""
    import time

    from mobilenets_core.data.dataset import Dataset

    real = Dataset.train_batches

    def train_batches(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            time.sleep(seconds)
            yield batch

    Dataset.train_batches = train_batches


def main(argv):
    data, workdir, overrides = argv[0], argv[1], json.loads(argv[2])
    backend = "jax"
    for option in argv[3:]:
        if option.startswith("--backend="):
            backend = option.split("=", 1)[1]
    for option in argv[3:]:
        if option.startswith("--kill-in-save="):
            step = int(option.split("=", 1)[1])
            kill_inside_save(step) if backend == "jax" else kill_inside_mindspore_save(step)
        elif option.startswith("--seconds-per-batch="):
            slow_batches(float(option.split("=", 1)[1]))
    if backend == "mindspore":
        from mobilenets_ms import train
        from mobilenets_ms.checkpoints import Checkpoints
    else:
        from mobilenets_jax import train
        from mobilenets_jax.checkpoints import Checkpoints

    train.train_and_evaluate(reliability_config(data, overrides), workdir)
    print(f"exit step={Checkpoints(workdir, read_only=True).latest_step()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
