"""Any supported weight file -> canonical tensors of a known network: the one place a weight file is read.

Formats, told apart by extension and content:
  .safetensors with mobilenets metadata   the canonical file (canonical.py)
  .safetensors without it                  a timm state dict (timm.py)
  .pth / .pt / .bin                        a timm state dict (needs torch)
  .ckpt                                    a MindSpore checkpoint of our networks (mindspore_ckpt.py), or
                                           a mindcv one, told by its parameter names (mindcv.py)
  a directory                              a JAX or MindSpore training workdir, its newest checkpoint (workdirs.py)

`read` returns a `WeightFile`: the tensors and the `ModelInfo` of the network they belong to. A
file that names its network (canonical metadata, a workdir's meta) must name the one asked for; a
timm or .ckpt file is read as the network asked for, with its own class count and BatchNorm
epsilon (a mindcv file names its network by its parameters' names and shapes). Every file carries
its architecture convention (`specs.CONVENTIONS`: timm's, mindcv's) as it carries its epsilon: the
network built for it takes both. `fit` then adapts it to a config: a classifier of another class count is dropped, so the
engine initialises it afresh. Every way a file can be refused is one first line naming the file
and what is wrong; the lines after it list the tensors.
"""
from __future__ import annotations

import dataclasses
import os

from mobilenets_core.config_check import ConfigError
from mobilenets_core.weights import canonical, hub, mindcv, mindspore_ckpt, timm, workdirs
from mobilenets_core.weights.identity import ModelInfo, differing, settings
from mobilenets_core.weights.tensors import check, check_state, expected_shapes

CLASSIFIER = ("classifier.weight", "classifier.bias")
NETWORK_FIELDS = ("name", "width", "groups", "variant")  # the class count may differ: `fit` re-initialises the classifier


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """A weight file read: its canonical tensors, and the network, class count and epsilon they are of."""

    path: str
    kind: str
    state: dict
    info: ModelInfo


def _open(path: str, label: str) -> tuple[str, tuple | None]:
    """(kind, contents): a .safetensors file is read here, once (its metadata tells its kind); the
    other kinds are told by their name and read by their spoke."""
    if os.path.isdir(path):
        return workdirs.kind(path, label), None
    if path.endswith(".ckpt"):
        return "MindSpore checkpoint", None
    if path.endswith((".pth", ".pt", ".bin")):
        return "timm state dict", None
    if path.endswith(".safetensors"):
        try:
            tensors, meta = canonical.read_safetensors(path)
        except ValueError as e:
            raise ConfigError(f"{label}={path!r} could not be read as .safetensors: {str(e).split(': ', 1)[-1]}") \
                from None
        info = canonical.info_from_metadata(meta)
        return ("canonical" if info else "timm state dict"), (tensors, info)
    raise ConfigError(f"{label}={path!r}: unknown weight file type; expected a canonical or timm "
                      f".safetensors, a timm .pth, a MindSpore .ckpt or a JAX or MindSpore workdir")


def read(path: str, wanted: ModelInfo, label: str = "init.weights") -> WeightFile:
    """The file at `path` as canonical tensors of the network `wanted` names (its class count and
    epsilon may differ: they are the file's). ConfigError, first line naming the file, otherwise.
    `path` may be a Hub name (hf-hub:timm/...): the file in the Hugging Face cache is read."""
    if hub.is_hub_name(path):
        path = hub.resolve(path, label)
    if not os.path.exists(path):
        raise ConfigError(f"{label}={path!r} does not exist")
    kind, contents = _open(path, label)
    try:
        if kind == "MindSpore checkpoint":  # ours or mindcv's: told apart by the parameter names
            tensors = mindspore_ckpt.read(path)
            kind, contents = ("mindcv checkpoint" if mindcv.is_mindcv(tensors) else kind), (tensors, None)
        state, info, named_by = _read(path, kind, contents, wanted, label)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or foreign files fail inside third-party readers
        reason = " ".join(str(e).split())[:300]
        raise ConfigError(f"{label}={path!r} cannot be read as a {kind} ({type(e).__name__}: {reason}); "
                          f"is the file complete, and is it a {kind}?") from None
    differ = differing(info, wanted, NETWORK_FIELDS)
    if differ:
        line = (f"{label}={path!r} holds {settings(info, differ)} ({named_by}); this config has "
                f"{settings(wanted, differ)}: set those to the file's values, or use weights of this network")
        try:
            as_file = wanted.replace(convention=info.convention)
            fit(WeightFile(path, kind, state, as_file), as_file, "its tensors")
        except ConfigError as e:
            raise ConfigError(f"{line}\n{e}") from None
        raise ConfigError(line)
    try:  # a file that does not name its network, read as `wanted`: all of it must fit
        check_state(state, info.architecture(), source=f"{label}={path}")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return WeightFile(path, kind, state, info)


def _read(path: str, kind: str, contents, wanted: ModelInfo, label: str) -> tuple[dict, ModelInfo, str]:
    """(state, the file's ModelInfo, what named the network)."""
    if kind == "canonical":
        state, info = contents
        check_state(state, info.architecture(), source=path)
        return state, info, "by its metadata"
    if kind.endswith("workdir"):
        state, info, _ = workdirs.read(path, label)
        return state, info, "by its checkpoint metadata"
    if kind == "mindcv checkpoint":
        try:
            return _read_mindcv(contents[0], wanted)
        except ValueError as e:  # fits no mindcv network: name the file, then the tensors
            raise ConfigError(f"{label}={path!r}: {e}") from None
    if kind == "MindSpore checkpoint":
        tensors = contents[0]
        as_file = wanted.replace(convention=mindspore_ckpt.trained_convention(tensors))
        state = mindspore_ckpt.to_canonical(tensors, expected_shapes(as_file.architecture()))
        if "classifier.weight" not in state:
            raise ConfigError(f"{label}={path!r}: no classifier.weight among its {len(tensors)} tensors; "
                              f"is it a checkpoint of a mobilenets network?")
        info = as_file.replace(num_classes=int(state["classifier.weight"].shape[0]),
                               bn_eps=mindspore_ckpt.trained_bn_eps(tensors))
        return state, info, "by its tensors"
    timm_state = contents[0] if contents else timm.read_state_dict(path)
    classifier = timm_state.get("classifier.weight")
    info = wanted.replace(num_classes=int(classifier.shape[0]) if classifier is not None else wanted.num_classes,
                          bn_eps=timm.TIMM_BN_EPS)
    return timm.from_timm(timm_state, info.architecture()), info, "by its tensors"


def _read_mindcv(tensors: dict, wanted: ModelInfo) -> tuple[dict, ModelInfo, str]:
    """A mindcv checkpoint: the network whose every parameter it holds, else `wanted` (as mindcv's),
    whose check then names what does not fit (ValueError)."""
    found = mindcv.identify(tensors)
    if found:
        name, width, groups, num_classes = found
        info = ModelInfo(name, width, groups, num_classes, mindcv.MINDCV_BN_EPS, mindcv.CONVENTION)
        return mindcv.from_mindcv(tensors, info.architecture()), info, "by its parameter names and shapes"
    classifier = tensors.get(mindcv.classifier_key(wanted.name))
    info = wanted.replace(num_classes=int(classifier.shape[0]) if classifier is not None else wanted.num_classes,
                          bn_eps=mindcv.MINDCV_BN_EPS, convention=mindcv.CONVENTION)
    return mindcv.from_mindcv(tensors, info.architecture()), info, "by its tensors"


def fit(weights: WeightFile, wanted: ModelInfo, source: str | None = None) -> tuple[dict, list]:
    """(state for `wanted`, classifier tensors left to fresh initialisation).

    Raises ConfigError naming every tensor of the body that is missing, extra or misshapen."""
    arch = wanted.architecture()
    expected = expected_shapes(arch)
    state = weights.state
    reinit = [n for n in CLASSIFIER if n not in state or tuple(state[n].shape) != tuple(expected[n])]
    try:
        check({n: v for n, v in state.items() if n not in CLASSIFIER},
              {n: s for n, s in expected.items() if n not in CLASSIFIER},
              f"{source or f'init.weights={weights.path}'} do not fit {arch.name} width={arch.width} "
              f"groups={arch.groups}:")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {n: v for n, v in state.items() if n in expected and n not in reinit}, reinit


def initial_weights(config, say) -> tuple[WeightFile, dict, list]:
    """config.init.weights fitted to config.model: (the file, its tensors that fit, the classifier
    tensors to initialise afresh). config.model.bn_eps and model.convention become the epsilon and the
    architecture convention the weights were trained with."""
    wanted = ModelInfo.from_config(config.model)
    weights = read(config.init.weights, wanted)
    fitted, reinit = fit(weights, wanted.replace(convention=weights.info.convention))
    say(f"initialised from {weights.kind} {weights.path} ({len(fitted)} tensors)"
        + (f"; classifier re-initialised for {wanted.num_classes} classes (the file has "
           f"{weights.info.num_classes})" if reinit else ""))
    for field, old, new in weights.info.adopt_into(config.model):
        what = {"bn_eps": "the epsilon the imported weights were trained with",
                "convention": "the network the imported weights were trained as"}[field]
        say(f"model.{field}={old} -> {new}, {what}")
    return weights, fitted, reinit


def model_weights(path: str, wanted: ModelInfo) -> WeightFile:
    """`load_model`'s weights: any supported file, of exactly the network `wanted` names (classes included)."""
    weights = read(path, wanted, label="weights")
    if weights.info.num_classes != wanted.num_classes:
        raise ConfigError(f"weights={path!r} holds model.num_classes={weights.info.num_classes} (by its "
                          f"classifier); this config has model.num_classes={wanted.num_classes}: set it to the "
                          f"file's value")
    return weights
