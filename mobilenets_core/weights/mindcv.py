"""mindcv checkpoints <-> canonical weights (a spoke of the canonical hub).

Covers what mindcv 0.3.0 registers for our families: `mobilenet_v1_{025,050,075,100}`,
`mobilenet_v3_{small,large}_{075,100}` and `shufflenet_v1_g{3,8}_{05,10,15,20}`, as
`mindspore.save_checkpoint(model, path)` writes them. The names are the attribute paths of mindcv's
`nn.SequentialCell`s, activations counted: `features.0.weight` (stem conv), `features.3.layers.4.gamma`
(a MobileNetV3 bottleneck's BatchNorm), `classifier.3.weight`; `first_conv.*` and
`features.<i>.branch_main_{1,2}.*` for ShuffleNetV1. A mindcv file is told from ours by those names
(`is_mindcv`); it holds no epsilon (mindcv's BatchNorm is MindSpore's, 1e-5) and is of the mindcv
convention (`specs.CONVENTIONS`): its network is mindcv's, which is not timm's for MobileNetV1 (ReLU)
and MobileNetV3 ("same"-padded depthwise convs, widths, head). MobileNetV3's head is two Dense layers
in mindcv, `classifier.0` (the canonical 1x1 `head.conv`, same function) and `classifier.3`.
"""
from __future__ import annotations

import numpy as np

from mobilenets_core import specs
from mobilenets_core.weights.tensors import MINDSPORE_BATCHNORM, check, expected_shapes

MINDCV_BN_EPS = 1e-5
CONVENTION = "mindcv"
_BN_ORDER = ("mean", "var", "scale", "bias")  # as mindcv's parameters_and_names() lists a BatchNorm
_WIDTH_SUFFIX = {0.25: "025", 0.5: "050", 0.75: "075", 1.0: "100"}
_SHUFFLENET_SUFFIX = {0.5: "05", 1.0: "10", 1.5: "15", 2.0: "20"}
_NETWORK_PREFIXES = ("features.", "first_conv.", "classifier.")  # the rest (moments.*, ema.*, ...) is not the network


def model_name(name: str, width: float, groups: int | None = None) -> str:
    """mindcv's registered name: 'mobilenet_v3_small_100', 'shufflenet_v1_g3_05'."""
    if name == "shufflenet_v1":
        return f"shufflenet_v1_g{groups}_{_SHUFFLENET_SUFFIX[float(width)]}"
    return f"{name}_{_WIDTH_SUFFIX[float(width)]}"


def variants() -> list:
    """(name, width, groups) of every network mindcv registers for our families."""
    out = []
    for name, widths in specs.MINDCV_WIDTHS.items():
        for groups in (specs.MINDCV_SHUFFLENET_GROUPS if name == "shufflenet_v1" else (None,)):
            out.extend((name, float(w), groups) for w in widths)
    return out


def is_mindcv(tensors: dict) -> bool:
    """Whether a MindSpore checkpoint holds a mindcv network (by its parameter names)."""
    return "stem.conv.weight" not in tensors and any(k.startswith(("features.", "first_conv.")) for k in tensors)


def _conv_bn(mapping: dict, layer: str, conv: str, bn: str) -> None:
    mapping[f"{layer}.conv.weight"] = f"{conv}.weight"
    for leaf in _BN_ORDER:
        mapping[f"{layer}.bn.{leaf}"] = f"{bn}.{MINDSPORE_BATCHNORM[leaf]}"


def _sequential(mapping: dict, prefix: str, parts, start: int = 0) -> None:
    """The parts of one block laid out as one SequentialCell: conv, BatchNorm [, activation] each, SE one cell."""
    index = start
    for part in parts:
        if isinstance(part, specs.SqueezeExcite):
            for conv in ("reduce", "expand"):
                for leaf in ("weight", "bias"):
                    mapping[f"{part.name}.{conv}.{leaf}"] = f"{prefix}.{index}.conv_{conv}.{leaf}"
            index += 1
        else:
            _conv_bn(mapping, part.name, f"{prefix}.{index}", f"{prefix}.{index + 1}")
            index += 3 if part.act else 2


def name_map(arch: specs.Architecture) -> dict:
    """canonical name -> mindcv parameter name, in mindcv's order, for every canonical tensor of `arch`."""
    mapping: dict = {}
    if arch.name == "shufflenet_v1":
        _conv_bn(mapping, "stem", "first_conv.0", "first_conv.1")
        for i, block in enumerate(b for b in arch.blocks if isinstance(b, specs.ShuffleUnit)):
            reduce, dw, expand = block.parts()
            _sequential(mapping, f"features.{i}.branch_main_1", [reduce])
            _sequential(mapping, f"features.{i}.branch_main_2", [dw, expand])
        mapping["classifier.weight"] = "classifier.weight"
        return mapping
    index = 0  # position in mindcv's `features`, activations counted
    for block in arch.blocks:
        if isinstance(block, specs.ConvBN):  # the stem, MobileNetV3's last 1x1 conv
            _conv_bn(mapping, block.name, f"features.{index}", f"features.{index + 1}")
            index += 3
        else:
            inner = f"features.{index}.layers" if arch.name != "mobilenet_v1" else f"features.{index}"
            _sequential(mapping, inner, block.parts())
            index += 1
    if arch.head.hidden:
        head, classifier = "classifier.3", {"head.conv.weight": "classifier.0.weight", "head.conv.bias": "classifier.0.bias"}
        mapping.update(classifier)
    else:
        head = "classifier"
    mapping["classifier.weight"] = f"{head}.weight"
    mapping["classifier.bias"] = f"{head}.bias"
    return mapping


def _mindcv_shape(name: str, shape: tuple) -> tuple:
    return tuple(shape[:2]) if name == "head.conv.weight" else tuple(shape)  # a Dense in mindcv, a 1x1 conv here


def expected_mindcv_shapes(arch: specs.Architecture) -> dict:
    """mindcv parameter name -> shape, in mindcv's order."""
    shapes = expected_shapes(arch)
    return {key: _mindcv_shape(name, shapes[name]) for name, key in name_map(arch).items()}


def network_tensors(tensors: dict) -> dict:
    """The network's parameters among a mindcv checkpoint's tensors (optimizer state, EMA and step left out)."""
    return {k: v for k, v in tensors.items() if k.startswith(_NETWORK_PREFIXES)}


def from_mindcv(tensors: dict, arch: specs.Architecture) -> dict:
    """mindcv parameters (name -> array) -> canonical state; ValueError lists what does not fit."""
    found = network_tensors(tensors)
    check(found, expected_mindcv_shapes(arch),
          f"mindcv weights do not fit mindcv's {model_name(arch.name, arch.width, arch.groups)} "
          f"({arch.name} width={arch.width}{f' groups={arch.groups}' if arch.groups else ''}, "
          f"num_classes={arch.head.num_classes}):")
    mapping = name_map(arch)
    return {name: np.asarray(found[mapping[name]], np.float32).reshape(shape)  # canonical (forward) order
            for name, shape in expected_shapes(arch).items()}


def to_mindcv(state: dict, arch: specs.Architecture) -> dict:
    """Canonical state -> mindcv parameters (float32, mindcv's names, shapes and order)."""
    return {key: np.ascontiguousarray(np.asarray(state[name], np.float32).reshape(_mindcv_shape(name, state[name].shape)))
            for name, key in name_map(arch).items()}


def classifier_key(name: str) -> str:
    return "classifier.3.weight" if name.startswith("mobilenet_v3") else "classifier.weight"


def identify(tensors: dict) -> tuple | None:
    """(name, width, groups, num_classes) of the mindcv network whose every parameter the file holds,
    by names and shapes; None when none fits."""
    found = network_tensors(tensors)
    shapes = {k: tuple(np.shape(v)) for k, v in found.items()}
    for name, width, groups in variants():
        classifier = shapes.get(classifier_key(name))
        if classifier is None or len(classifier) != 2:
            continue
        arch = specs.build_architecture(name, width, groups, int(classifier[0]), CONVENTION)
        if expected_mindcv_shapes(arch) == shapes:
            return name, width, groups, int(classifier[0])
    return None
