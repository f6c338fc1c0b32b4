"""Any supported weight file -> canonical weights for a given architecture.

Formats, told apart by extension and content:
  .safetensors with mobilenets metadata   the canonical file (mobilenets_core.weights)
  .safetensors without it                  a timm state dict
  .pth / .pt / .bin                        a timm state dict (needs torch)
  .ckpt                                    a MindSpore checkpoint of our networks
(A JAX workdir is read by the JAX engine, which hands its canonical state to `fit`.)

`fit` matches the file to the architecture the config asks for: when only the classifier differs
(another class count) it is dropped so the engine initialises it afresh; any other difference
stops the run, naming the tensors.
"""
from __future__ import annotations

import os

from mobilenets_core import mindspore_ckpt, specs, timm_format, weights
from mobilenets_core.config_check import ConfigError

CLASSIFIER = ("classifier.weight", "classifier.bias")


def describe(path: str) -> str:
    if os.path.isdir(path):
        return "JAX workdir"
    if path.endswith(".ckpt"):
        return "MindSpore checkpoint"
    if path.endswith((".pth", ".pt", ".bin")):
        return "timm state dict"
    if path.endswith(".safetensors"):
        return "canonical" if _canonical_info(path) else "timm state dict"
    raise ConfigError(f"init.weights={path!r}: unknown weight file type; expected a canonical or timm "
                      f".safetensors, a timm .pth, a MindSpore .ckpt or a JAX workdir")


def _canonical_info(path: str):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as e:
        raise ConfigError(f"init.weights={path!r} could not be read as .safetensors: {e}") from None
    return metadata if metadata.get("format") == "mobilenets-canonical" else None


def read(path: str, arch: specs.Architecture) -> tuple[dict, float, str]:
    """(canonical state as stored in the file, BatchNorm eps it was trained with, kind).

    Every way a file can be unreadable (truncated, not a weight file at all, another network named
    in its metadata) is a ConfigError whose first line names the file and what is wrong."""
    if not os.path.exists(path):
        raise ConfigError(f"init.weights={path!r} does not exist")
    kind = describe(path)
    if kind == "JAX workdir":
        raise ConfigError(f"init.weights={path!r} is a JAX workdir; convert it first with "
                          f"--backend=jax --mode=convert (see README) or use the JAX engine")
    try:
        return _read(path, arch, kind)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or foreign files fail inside third-party readers
        reason = " ".join(str(e).split())[:300]
        raise ConfigError(f"init.weights={path!r} cannot be read as a {kind} ({type(e).__name__}: {reason}); "
                          f"is the file complete, and is it a {kind}?") from None


def check_same_network(path: str, file_model: dict, state: dict, arch: specs.Architecture, where: str) -> None:
    """Raise ConfigError if a file that names its network (`where`: e.g. its metadata) holds another
    family, width or groups than `arch` (another class count is left to `fit`). The first line says
    what differs and the fix; the lines after it list the tensors."""
    wanted = {"name": arch.name, "width": arch.width, "groups": arch.groups}
    differ = [k for k in wanted if k in file_model and file_model[k] != wanted[k]]
    if not differ:
        return
    line = (f"init.weights={path!r} holds " + ", ".join(f"model.{k}={file_model[k]!r}" for k in differ)
            + f" ({where}); this config has " + ", ".join(f"model.{k}={wanted[k]!r}" for k in differ)
            + ": set those to the file's values, or use weights of this network")
    try:
        fit(state, arch, "its tensors")
    except ConfigError as e:
        raise ConfigError(f"{line}\n{e}") from None
    raise ConfigError(line)


def _read(path: str, arch: specs.Architecture, kind: str) -> tuple[dict, float, str]:
    # Architecture with the file's class count, so that the names and shapes can be compared.
    if kind == "canonical":
        state, info = weights.load(path)
        check_same_network(path, {"name": info.name, "width": info.width, "groups": info.groups}, state, arch,
                           "by its metadata")
        return state, info.bn_eps, kind
    if kind == "MindSpore checkpoint":
        tensors = mindspore_ckpt.read(path)
        names = list(specs.canonical_shapes(arch))
        state = mindspore_ckpt.to_canonical(tensors, names)
        if "classifier.weight" not in state:
            raise ConfigError(f"init.weights={path!r}: no classifier.weight among its {len(tensors)} tensors; "
                              f"is it a checkpoint of a mobilenets network?")
        return state, _eps_from(tensors), kind
    timm_state = timm_format.read_state_dict(path)
    file_arch = _with_classes(arch, timm_state.get("classifier.weight"))
    return timm_format.from_timm(timm_state, file_arch), timm_format.TIMM_BN_EPS, kind


def _eps_from(tensors: dict) -> float:
    value = tensors.get("mobilenets.bn_eps")
    return float(value.reshape(-1)[0]) if value is not None else 1e-5


def _with_classes(arch: specs.Architecture, classifier_weight):
    if classifier_weight is None:
        return arch
    n = int(classifier_weight.shape[0])
    return specs.build_architecture(arch.name, arch.width, arch.groups, n)


def fit(state: dict, arch: specs.Architecture, source: str) -> tuple[dict, list]:
    """(state for `arch`, classifier tensors left to fresh initialisation).

    Raises ConfigError naming every tensor of the body that is missing, extra or misshapen."""
    expected = {n: s for n, (s, _) in specs.canonical_shapes(arch).items()}
    reinit = [n for n in CLASSIFIER if n in expected and (n not in state or tuple(state[n].shape) != tuple(expected[n]))]
    try:
        weights.check_shapes({n: v for n, v in state.items() if n not in CLASSIFIER},
                             {n: s for n, s in expected.items() if n not in CLASSIFIER},
                             f"{source} do not fit {arch.name} width={arch.width} groups={arch.groups}:")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {n: v for n, v in state.items() if n in expected and n not in reinit}, reinit
