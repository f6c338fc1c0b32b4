"""Subprocess worker for tests that need their own JAX process (device count, jax.distributed).

    python tests/jax_worker.py steps OUT.npz        one train step; loss and parameters to OUT.npz
    python tests/jax_worker.py train WORKDIR        train_and_evaluate of tests.helpers.tiny_train_config

XLA_FLAGS / JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_COORDINATOR_ADDRESS come from the environment.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mobilenets_core.data import build_dataset  # noqa: E402
from mobilenets_jax import train  # noqa: E402
from tests.helpers import tiny_train_config  # noqa: E402


def steps(out):
    config = tiny_train_config(**{"train.epochs": 1})
    dataset = build_dataset(config, "train")
    trainer = train.Trainer(config, dataset.steps_per_epoch(config.train.batch_size))
    state = trainer.init_state(0)
    losses = []
    for i, batch in enumerate(dataset.train_batches(config.train.batch_size, epoch=0)):
        if i == 1:
            break
        state, metrics = trainer.train_step(state, trainer.to_global(batch))
        losses.append(float(metrics["loss"]))
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
    np.savez(out, losses=np.array(losses), devices=jax.device_count(),
             **{jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves})


def run_training(workdir):
    config = tiny_train_config(**{"train.epochs": 1, "train.batch_size": 128})
    result = train.train_and_evaluate(config, workdir)
    print(f"top1={result['top1']!r} processes={jax.process_count()} devices={jax.device_count()}")


if __name__ == "__main__":
    {"steps": steps, "train": run_training}[sys.argv[1]](sys.argv[2])
