"""What both engines check before resuming or evaluating a workdir's checkpoint, by its meta:
the same network, and the same classes. Refused in one line, before anything is overwritten."""
from __future__ import annotations

from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights.identity import ModelInfo, differing, settings


def check_same_model(directory: str, step: int, meta: dict, model: ModelInfo) -> None:
    """ConfigError if the checkpoint's meta names another network than `model` (the config's)."""
    saved = meta.get("model") or {}
    differ = differing(saved, model)
    if differ:
        raise ConfigError(f"{directory} holds checkpoints (newest step {step}) of {settings(saved, differ)}; this "
                          f"config has {settings(model, differ)}: set the same values to resume or evaluate them, "
                          f"or use another --workdir")


def check_same_data(directory: str, step: int, meta: dict, train_ds) -> None:
    """Resuming on other classes would silently relabel them: refuse, naming both."""
    saved = meta.get("class_names")
    if saved is not None and list(saved) != list(train_ds.class_names):
        raise ConfigError(f"checkpoint step {step} in {directory} was trained on {meta.get('dataset')!r} "
                          f"with classes {saved[:10]}{' ...' if len(saved) > 10 else ''}; this config's dataset "
                          f"{train_ds.name!r} has {train_ds.class_names[:10]}"
                          f"{' ...' if len(train_ds.class_names) > 10 else ''}: point dataset.* at the same data "
                          f"to resume, or use another --workdir")
