"""Architectures as data: the four families written once, built by both engines.

`build_architecture(name, width, groups, num_classes)` turns a family's block table into an
`Architecture`: a flat list of concrete blocks with every channel count resolved. The JAX and
MindSpore engines only walk that list; canonical weight names, parameter counts and
multiply-adds are derived from it here, framework-free, so the engines cannot disagree on
what a model is.

Conventions (see shared REFERENCE.md and tests/fixtures/ARCH_NOTES.md):
- convolutions pad symmetrically by kernel // 2 (PyTorch / timm / MindSpore "pad" mode);
- conv weights are OIHW in the canonical format, dense weights (out, in);
- every conv is bias-free and followed by BatchNorm, except the MobileNetV3 head conv and the
  squeeze-excite convs, which carry a bias and no BatchNorm.
"""
from __future__ import annotations

import dataclasses

MODEL_NAMES = ("mobilenet_v1", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v1")
ACTIVATIONS = ("relu", "relu6", "hard_swish", None)

# Widths for which a reference implementation defines the network (see ARCH_NOTES.md).
SUPPORTED_WIDTHS = {
    "mobilenet_v1": (0.25, 0.5, 0.75, 1.0),
    "mobilenet_v3_small": (0.5, 0.75, 1.0),
    "mobilenet_v3_large": (0.75, 1.0),
    "shufflenet_v1": (0.5, 1.0, 1.5, 2.0),
}
SHUFFLENET_GROUPS = (1, 2, 3, 4, 8)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor`, never more than 10% below `v` (TF-slim rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# ----------------------------------------------------------------------------- blocks


@dataclasses.dataclass(frozen=True)
class ConvBN:
    """k x k convolution (no bias) + BatchNorm + optional activation."""

    name: str
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    groups: int = 1
    act: str | None = "relu"


@dataclasses.dataclass(frozen=True)
class SqueezeExcite:
    """Global pool -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> hard-sigmoid gate."""

    name: str
    channels: int
    reduced: int


@dataclasses.dataclass(frozen=True)
class DepthwiseSeparable:
    """Depthwise k x k + BN + act, [SE], pointwise 1x1 + BN [+ act]; MobileNetV1 and V3's first block."""

    name: str
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    act: str
    se: SqueezeExcite | None
    pw_act: bool  # MobileNetV1 applies the activation after the pointwise conv, V3 does not
    residual: bool
    stage: int = 0  # index of the run of blocks sharing one table output width (timm's stages)

    def parts(self):
        dw = ConvBN(f"{self.name}.dw", self.in_ch, self.in_ch, self.kernel, self.stride, self.in_ch, self.act)
        pw = ConvBN(f"{self.name}.pw", self.in_ch, self.out_ch, 1, 1, 1, self.act if self.pw_act else None)
        return [dw] + ([self.se] if self.se else []) + [pw]


@dataclasses.dataclass(frozen=True)
class InvertedResidual:
    """[expand 1x1 + BN + act], depthwise k x k + BN + act, [SE], project 1x1 + BN (linear)."""

    name: str
    in_ch: int
    mid_ch: int
    out_ch: int
    kernel: int
    stride: int
    act: str
    se: SqueezeExcite | None
    stage: int = 0

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    def parts(self):
        parts = []
        if self.mid_ch != self.in_ch:
            parts.append(ConvBN(f"{self.name}.expand", self.in_ch, self.mid_ch, 1, 1, 1, self.act))
        parts.append(ConvBN(f"{self.name}.dw", self.mid_ch, self.mid_ch, self.kernel, self.stride, self.mid_ch, self.act))
        if self.se:
            parts.append(self.se)
        parts.append(ConvBN(f"{self.name}.project", self.mid_ch, self.out_ch, 1, 1, 1, None))
        return parts


@dataclasses.dataclass(frozen=True)
class ShuffleUnit:
    """ShuffleNetV1 unit (MegVII / mindcv / MindSpore zoo semantics):
    grouped 1x1 + BN + ReLU, channel shuffle (when groups > 1, the first unit too), depthwise 3x3
    + BN (no ReLU), grouped 1x1 + BN.
    Stride 1: ReLU(x + main). Stride 2: ReLU(concat(avgpool(x), main)), so the main branch outputs
    out_ch - in_ch channels; avgpool is 3x3 stride 2 with TF "same" padding (nothing before, one
    after on even sizes) averaging real pixels only, as MindSpore's pad_mode="same".
    Channel shuffle: reshape (C // g, g) -> transpose -> flatten, i.e. new[j * C/g + i] = old[i * g + j]."""

    name: str
    in_ch: int
    out_ch: int
    mid_ch: int
    groups: int
    first_groups: int  # groups of the first 1x1 conv: 1 for the very first unit of stage 2
    stride: int
    stage: int = 0

    @property
    def branch_ch(self) -> int:
        return self.out_ch - self.in_ch if self.stride == 2 else self.out_ch

    def parts(self):
        return [
            ConvBN(f"{self.name}.reduce", self.in_ch, self.mid_ch, 1, 1, self.first_groups, "relu"),
            ConvBN(f"{self.name}.dw", self.mid_ch, self.mid_ch, 3, self.stride, self.mid_ch, None),
            ConvBN(f"{self.name}.expand", self.mid_ch, self.branch_ch, 1, 1, self.groups, None),
        ]


@dataclasses.dataclass(frozen=True)
class MaxPool:
    """Max-pool with TF "same" padding (MindSpore pad_mode="same"): ShuffleNetV1's stem pool."""

    name: str
    kernel: int = 3
    stride: int = 2


Block = ConvBN | DepthwiseSeparable | InvertedResidual | ShuffleUnit | MaxPool


@dataclasses.dataclass(frozen=True)
class Head:
    """Global average pool, [1x1 conv with bias + activation], dropout, classifier."""

    in_ch: int
    hidden: int | None  # MobileNetV3's 1280/1024 conv; None for V1 and ShuffleNet
    hidden_act: str | None
    num_classes: int
    classifier_bias: bool


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    width: float
    groups: int | None
    blocks: tuple
    head: Head

    @property
    def num_features(self) -> int:
        return self.head.hidden or self.head.in_ch


def stage_indices(table_out_channels) -> list:
    """Stage index per block: a new stage starts where the table's output width changes."""
    stages, stage = [], 0
    for i, out in enumerate(table_out_channels):
        if i and out != table_out_channels[i - 1]:
            stage += 1
        stages.append(stage)
    return stages


# ----------------------------------------------------------------------------- MobileNetV1

# Output channels and stride of the 13 depthwise-separable blocks (paper Table 1).
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


def mobilenet_v1(width: float, num_classes: int) -> Architecture:
    ch = lambda c: make_divisible(c * width)  # noqa: E731
    # ReLU6 as in TF-slim, Keras and timm (the paper says ReLU; trained weights assume ReLU6)
    stem = ConvBN("stem", 3, ch(32), 3, 2, 1, "relu6")
    blocks, in_ch = [stem], stem.out_ch
    stages = stage_indices([out for out, _ in MOBILENET_V1_BLOCKS])
    for i, ((out, stride), stage) in enumerate(zip(MOBILENET_V1_BLOCKS, stages)):
        blocks.append(DepthwiseSeparable(f"blocks.{i}", in_ch, ch(out), 3, stride, "relu6", None,
                                         pw_act=True, residual=False, stage=stage))
        in_ch = ch(out)
    head = Head(in_ch, None, None, num_classes, classifier_bias=True)
    return Architecture("mobilenet_v1", width, None, tuple(blocks), head)


# ----------------------------------------------------------------------------- MobileNetV3

# kernel, expansion ratio (of the block's input channels), out, SE, activation, stride.
# Ratios reproduce the paper's expanded sizes at width 1.0 (e.g. 88 = 24 x 3.67).
MOBILENET_V3_LARGE = (
    (3, 1, 16, False, "relu", 1),
    (3, 4, 24, False, "relu", 2),
    (3, 3, 24, False, "relu", 1),
    (5, 3, 40, True, "relu", 2),
    (5, 3, 40, True, "relu", 1),
    (5, 3, 40, True, "relu", 1),
    (3, 6, 80, False, "hard_swish", 2),
    (3, 2.5, 80, False, "hard_swish", 1),
    (3, 2.3, 80, False, "hard_swish", 1),
    (3, 2.3, 80, False, "hard_swish", 1),
    (3, 6, 112, True, "hard_swish", 1),
    (3, 6, 112, True, "hard_swish", 1),
    (5, 6, 160, True, "hard_swish", 2),
    (5, 6, 160, True, "hard_swish", 1),
    (5, 6, 160, True, "hard_swish", 1),
)
MOBILENET_V3_SMALL = (
    (3, 1, 16, True, "relu", 2),
    (3, 4.5, 24, False, "relu", 2),
    (3, 3.67, 24, False, "relu", 1),
    (5, 4, 40, True, "hard_swish", 2),
    (5, 6, 40, True, "hard_swish", 1),
    (5, 6, 40, True, "hard_swish", 1),
    (5, 3, 48, True, "hard_swish", 1),
    (5, 3, 48, True, "hard_swish", 1),
    (5, 6, 96, True, "hard_swish", 2),
    (5, 6, 96, True, "hard_swish", 1),
    (5, 6, 96, True, "hard_swish", 1),
)
# Last 1x1 conv (scaled with width) and head conv (never scaled), per variant.
MOBILENET_V3_TAIL = {"mobilenet_v3_large": (960, 1280), "mobilenet_v3_small": (576, 1024)}


def mobilenet_v3(name: str, width: float, num_classes: int) -> Architecture:
    table = MOBILENET_V3_LARGE if name == "mobilenet_v3_large" else MOBILENET_V3_SMALL
    ch = lambda c: make_divisible(c * width)  # noqa: E731
    stem_ch = 16 if width < 0.75 else ch(16)  # timm fixes the stem below width 0.75
    stem = ConvBN("stem", 3, stem_ch, 3, 2, 1, "hard_swish")
    blocks, in_ch = [stem], stem.out_ch
    stages = stage_indices([row[2] for row in table])
    for i, ((k, ratio, out, use_se, act, stride), stage) in enumerate(zip(table, stages)):
        out_ch, block_name = ch(out), f"blocks.{i}"
        if ratio == 1:  # no expansion conv: timm's DepthwiseSeparableConv
            se = SqueezeExcite(f"{block_name}.se", in_ch, make_divisible(in_ch * 0.25)) if use_se else None
            residual = stride == 1 and in_ch == out_ch
            blocks.append(DepthwiseSeparable(block_name, in_ch, out_ch, k, stride, act, se, pw_act=False,
                                             residual=residual, stage=stage))
        else:
            mid = make_divisible(in_ch * ratio)
            se = SqueezeExcite(f"{block_name}.se", mid, make_divisible(mid * 0.25)) if use_se else None
            blocks.append(InvertedResidual(block_name, in_ch, mid, out_ch, k, stride, act, se, stage))
        in_ch = out_ch
    last, hidden = MOBILENET_V3_TAIL[name]
    blocks.append(ConvBN("final", in_ch, ch(last), 1, 1, 1, "hard_swish"))
    head = Head(ch(last), hidden, "hard_swish", num_classes, classifier_bias=True)
    return Architecture(name, width, None, tuple(blocks), head)


# ----------------------------------------------------------------------------- ShuffleNetV1

SHUFFLENET_V1_REPEATS = (4, 8, 4)
# Stage output channels at width 1.0 (paper Table 1).
SHUFFLENET_V1_CHANNELS_1X = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
                             4: (272, 544, 1088), 8: (384, 768, 1536)}
# MegVII / MindSpore tables: (stem, stage2, stage3, stage4) per width.
SHUFFLENET_V1_TABLES = {
    3: {0.5: (12, 120, 240, 480), 1.0: (24, 240, 480, 960), 1.5: (24, 360, 720, 1440), 2.0: (48, 480, 960, 1920)},
    8: {0.5: (16, 192, 384, 768), 1.0: (24, 384, 768, 1536), 1.5: (24, 576, 1152, 2304), 2.0: (48, 768, 1536, 3072)},
}


def shufflenet_v1_channels(groups: int, width: float) -> tuple:
    """(stem, stage2, stage3, stage4) output channels.

    Groups 3 and 8 use MegVII's published tables. Groups 1, 2 and 4 have only the paper's 1.0x
    row; other widths scale it the way MegVII's tables scale theirs (stage channels x width, kept
    a multiple of 4 x groups so the bottleneck splits into groups; stem 12 / 24 / 24 / 48)."""
    if groups in SHUFFLENET_V1_TABLES:
        return SHUFFLENET_V1_TABLES[groups][width]
    stem = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}[width]
    stages = tuple(make_divisible(c * width, 4 * groups) for c in SHUFFLENET_V1_CHANNELS_1X[groups])
    return (stem,) + stages


def shufflenet_v1(width: float, groups: int, num_classes: int) -> Architecture:
    stem_ch, *stage_chs = shufflenet_v1_channels(groups, width)
    blocks = [ConvBN("stem", 3, stem_ch, 3, 2, 1, "relu"), MaxPool("stem_pool")]
    in_ch, index = stem_ch, 0
    for stage, (out_ch, repeats) in enumerate(zip(stage_chs, SHUFFLENET_V1_REPEATS)):
        for i in range(repeats):
            stride = 2 if i == 0 else 1
            first_groups = 1 if stage == 0 and i == 0 else groups
            blocks.append(ShuffleUnit(f"blocks.{index}", in_ch, out_ch, out_ch // 4, groups, first_groups, stride,
                                      stage))
            in_ch, index = out_ch, index + 1
    head = Head(in_ch, None, None, num_classes, classifier_bias=False)
    return Architecture("shufflenet_v1", width, groups, tuple(blocks), head)


# ----------------------------------------------------------------------------- entry point


def build_architecture(name: str, width: float = 1.0, groups: int | None = None,
                       num_classes: int = 1000) -> Architecture:
    """Resolve a family + width (+ groups) into concrete blocks; raise ValueError naming the fix."""
    if name not in MODEL_NAMES:
        raise ValueError(f"model.name={name!r} is not a known model; choose one of {', '.join(MODEL_NAMES)}")
    width = float(width)
    if width not in SUPPORTED_WIDTHS[name]:
        raise ValueError(f"model.width={width} is not supported for {name}; "
                         f"supported widths: {', '.join(str(w) for w in SUPPORTED_WIDTHS[name])}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model.num_classes={num_classes!r} must be a positive integer")
    if name == "shufflenet_v1":
        if groups not in SHUFFLENET_GROUPS:
            raise ValueError(f"model.groups={groups!r} is not supported for shufflenet_v1; "
                             f"supported groups: {', '.join(map(str, SHUFFLENET_GROUPS))}")
        return shufflenet_v1(width, groups, num_classes)
    if groups not in (None, 1):
        raise ValueError(f"model.groups={groups!r} applies to shufflenet_v1 only; leave it unset (None) for {name}")
    if name == "mobilenet_v1":
        return mobilenet_v1(width, num_classes)
    return mobilenet_v3(name, width, num_classes)


def architecture_from_config(model_cfg) -> Architecture:
    """Build from a config's `model` section (a ConfigDict or any object with those attributes)."""
    return build_architecture(model_cfg.name, model_cfg.width, model_cfg.get("groups"), model_cfg.num_classes)


# ----------------------------------------------------------------------------- derived facts


def leaf_layers(arch: Architecture):
    """Every ConvBN / SqueezeExcite / MaxPool in forward order (blocks expanded into their parts)."""
    for block in arch.blocks:
        if hasattr(block, "parts"):
            yield from block.parts()
        else:
            yield block


def canonical_shapes(arch: Architecture) -> dict:
    """name -> (shape, trainable) of every tensor in the canonical weight format, in forward order."""
    shapes = {}

    def conv_bn(layer: ConvBN):
        shapes[f"{layer.name}.conv.weight"] = ((layer.out_ch, layer.in_ch // layer.groups, layer.kernel, layer.kernel), True)
        for stat, trainable in (("scale", True), ("bias", True), ("mean", False), ("var", False)):
            shapes[f"{layer.name}.bn.{stat}"] = ((layer.out_ch,), trainable)

    for layer in leaf_layers(arch):
        if isinstance(layer, ConvBN):
            conv_bn(layer)
        elif isinstance(layer, SqueezeExcite):
            shapes[f"{layer.name}.reduce.weight"] = ((layer.reduced, layer.channels, 1, 1), True)
            shapes[f"{layer.name}.reduce.bias"] = ((layer.reduced,), True)
            shapes[f"{layer.name}.expand.weight"] = ((layer.channels, layer.reduced, 1, 1), True)
            shapes[f"{layer.name}.expand.bias"] = ((layer.channels,), True)
    head = arch.head
    if head.hidden:
        shapes["head.conv.weight"] = ((head.hidden, head.in_ch, 1, 1), True)
        shapes["head.conv.bias"] = ((head.hidden,), True)
    shapes["classifier.weight"] = ((head.num_classes, arch.num_features), True)
    if head.classifier_bias:
        shapes["classifier.bias"] = ((head.num_classes,), True)
    return shapes


def count_params(arch: Architecture) -> int:
    """Trainable parameters (BatchNorm running statistics excluded), as timm and mindcv count them."""
    total = 0
    for shape, trainable in canonical_shapes(arch).values():
        if trainable:
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a convolution padded by kernel // 2 on both sides."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple:
    """(before, after) padding of TF / MindSpore "same" mode; output size is ceil(size / stride)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def count_macs(arch: Architecture, image_size: int = 224) -> int:
    """Multiply-adds of one forward pass: convolutions and dense layers (what FLOP counters count)."""
    size, macs = image_size, 0
    for layer in leaf_layers(arch):
        if isinstance(layer, ConvBN):
            size = conv_out(size, layer.kernel, layer.stride)
            macs += size * size * layer.out_ch * (layer.in_ch // layer.groups) * layer.kernel ** 2
        elif isinstance(layer, SqueezeExcite):
            macs += 2 * layer.channels * layer.reduced
        elif isinstance(layer, MaxPool):
            size = -(-size // layer.stride)
    if arch.head.hidden:
        macs += arch.head.in_ch * arch.head.hidden
    macs += arch.num_features * arch.head.num_classes
    return macs
