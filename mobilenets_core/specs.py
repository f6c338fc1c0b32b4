"""Architectures as data: the families (MobileNetV1-V4, ShuffleNetV1) written once, built by both engines.

`build_architecture(name, width, groups, num_classes)` turns a family's block table into an
`Architecture`: a flat list of concrete blocks with every channel count resolved. The JAX and
MindSpore engines only walk that list; canonical weight names, parameter counts and
multiply-adds are derived from it here, framework-free, so the engines cannot disagree on
what a model is.

Conventions (see shared REFERENCE.md and tests/fixtures/ARCH_NOTES.md):
- convolutions pad symmetrically by kernel // 2 (PyTorch / timm / MindSpore "pad" mode), except
  where a reference network pads "same" (`ConvBN.padding`; mindcv's MobileNetV3 depthwise convs);
- `model.convention` names whose network a family is (`CONVENTIONS`): "timm" (the default: timm's
  widths, ReLU6 MobileNetV1, symmetric padding) or "mindcv" (mindcv 0.3.0's MobileNetV1 with ReLU,
  MobileNetV3 with "same"-padded depthwise convs, its own expansion widths and a width-scaled head).
  ShuffleNetV1 is MegVII's / mindcv's under both (`same_function` says so);
- conv weights are OIHW in the canonical format, dense weights (out, in);
- every conv is bias-free and followed by BatchNorm, except the MobileNetV3 head conv and the
  squeeze-excite convs, which carry a bias and no BatchNorm, and MobileNetV4's attention projections
  (`Conv`: neither bias nor BatchNorm).
"""
from __future__ import annotations

import dataclasses

MODEL_NAMES = ("mobilenet_v1", "mobilenet_v3_small", "mobilenet_v3_large", "shufflenet_v1", "mobilenet_v2",
               "mobilenet_v4")
ACTIVATIONS = ("relu", "relu6", "hard_swish", "gelu", None)  # gelu: exact (erf), as torch's nn.GELU

# Widths for which a reference implementation defines the network (see ARCH_NOTES.md).
SUPPORTED_WIDTHS = {
    "mobilenet_v1": (0.25, 0.5, 0.75, 1.0),
    "mobilenet_v3_small": (0.5, 0.75, 1.0),
    "mobilenet_v3_large": (0.75, 1.0),
    "shufflenet_v1": (0.5, 1.0, 1.5, 2.0),
    "mobilenet_v2": (0.5, 0.75, 1.0, 1.4),
}
# MobileNetV4 (model.variant) -> the widths timm registers (mobilenetv4_conv_small_050 is width 0.5).
MOBILENET_V4_WIDTHS = {"conv_small": (0.35, 0.5, 1.0), "conv_medium": (1.0,), "conv_large": (1.0,),
                       "hybrid_medium": (0.75, 1.0), "hybrid_large": (0.75, 1.0)}
SHUFFLENET_GROUPS = (1, 2, 3, 4, 8)
CONVENTIONS = ("timm", "mindcv")
# The variants mindcv 0.3.0 registers (mobilenet_v1_025 ... shufflenet_v1_g8_20): model.convention=mindcv builds these.
MINDCV_WIDTHS = {"mobilenet_v1": (0.25, 0.5, 0.75, 1.0), "mobilenet_v3_small": (0.75, 1.0),
                 "mobilenet_v3_large": (0.75, 1.0), "shufflenet_v1": (0.5, 1.0, 1.5, 2.0)}
MINDCV_SHUFFLENET_GROUPS = (3, 8)


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
    padding: str = "symmetric"  # kernel // 2 on every side; "same": TF / MindSpore pad_mode="same" (`same_padding`)
    stage: int = 0  # a ConvBN that is a block of its own (MobileNetV4's conv rows): timm's stage


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
    dw_padding: str = "symmetric"  # ConvBN.padding of the depthwise conv

    def parts(self):
        dw = ConvBN(f"{self.name}.dw", self.in_ch, self.in_ch, self.kernel, self.stride, self.in_ch, self.act,
                    self.dw_padding)
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
    dw_padding: str = "symmetric"  # ConvBN.padding of the depthwise conv

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    def parts(self):
        parts = []
        if self.mid_ch != self.in_ch:
            parts.append(ConvBN(f"{self.name}.expand", self.in_ch, self.mid_ch, 1, 1, 1, self.act))
        parts.append(ConvBN(f"{self.name}.dw", self.mid_ch, self.mid_ch, self.kernel, self.stride, self.mid_ch, self.act,
                            self.dw_padding))
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


@dataclasses.dataclass(frozen=True)
class Conv:
    """A 1x1 convolution without BatchNorm or activation: the projections of `MobileAttention`."""

    name: str
    in_ch: int
    out_ch: int


@dataclasses.dataclass(frozen=True)
class Norm:
    """BatchNorm alone (tensors `<name>.bn.*`): the pre-norm of `MobileAttention`."""

    name: str
    channels: int


@dataclasses.dataclass(frozen=True)
class LayerScale:
    """x * gamma, one learned factor per channel (`<name>.gamma`; timm's LayerScale2d)."""

    name: str
    channels: int


@dataclasses.dataclass(frozen=True)
class EdgeResidual:
    """Fused inverted bottleneck (FusedIB, timm's EdgeResidual): k x k expand + BN + act, 1x1 project + BN."""

    name: str
    in_ch: int
    mid_ch: int
    out_ch: int
    kernel: int
    stride: int
    act: str
    stage: int = 0

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    def parts(self):
        return [ConvBN(f"{self.name}.expand", self.in_ch, self.mid_ch, self.kernel, self.stride, 1, self.act),
                ConvBN(f"{self.name}.project", self.mid_ch, self.out_ch, 1, 1, 1, None)]


@dataclasses.dataclass(frozen=True)
class UniversalInvertedResidual:
    """MobileNetV4's UIB: [depthwise start + BN], expand 1x1 + BN + act, [depthwise mid + BN + act],
    project 1x1 + BN, [depthwise end + BN], [layer scale]. A kernel of 0 leaves that depthwise out
    (ExtraDW: start and mid; IB: mid; ConvNeXt-like: start; FFN: none). The stride is the first present
    depthwise's: mid's, else start's, else end's."""

    name: str
    in_ch: int
    mid_ch: int
    out_ch: int
    start_kernel: int
    mid_kernel: int
    end_kernel: int
    stride: int
    act: str
    layer_scale: bool
    stage: int = 0

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_ch == self.out_ch

    def parts(self):
        n, parts = self.name, []
        if self.start_kernel:
            stride = 1 if self.mid_kernel else self.stride
            parts.append(ConvBN(f"{n}.dw_start", self.in_ch, self.in_ch, self.start_kernel, stride, self.in_ch, None))
        parts.append(ConvBN(f"{n}.expand", self.in_ch, self.mid_ch, 1, 1, 1, self.act))
        if self.mid_kernel:
            parts.append(ConvBN(f"{n}.dw", self.mid_ch, self.mid_ch, self.mid_kernel, self.stride, self.mid_ch, self.act))
        parts.append(ConvBN(f"{n}.project", self.mid_ch, self.out_ch, 1, 1, 1, None))
        if self.end_kernel:
            stride = 1 if self.start_kernel or self.mid_kernel else self.stride
            parts.append(ConvBN(f"{n}.dw_end", self.out_ch, self.out_ch, self.end_kernel, stride, self.out_ch, None))
        if self.layer_scale:
            parts.append(LayerScale(f"{n}.layer_scale", self.out_ch))
        return parts


@dataclasses.dataclass(frozen=True)
class MobileAttention:
    """MobileNetV4's Mobile MQA block, x + layer_scale(attention(BN(x))): `heads` queries (1x1 conv) share one
    key and one value (1x1 convs), which first pass a depthwise k x k, stride kv_stride + BN when kv_stride > 1;
    softmax(q k^T / sqrt(key_dim)) v, heads concatenated (head-major channels), 1x1 output conv. No biases."""

    name: str
    channels: int
    heads: int
    key_dim: int
    value_dim: int
    kv_stride: int
    kernel: int
    layer_scale: bool
    stage: int = 0

    residual = True

    def parts(self):
        """Its layers in the order of their tensors (the forward is not a chain of them)."""
        n, c = self.name, self.channels
        parts = [Norm(f"{n}.norm", c), Conv(f"{n}.query", c, self.heads * self.key_dim)]
        for kind, dim in (("key", self.key_dim), ("value", self.value_dim)):
            if self.kv_stride > 1:
                parts.append(ConvBN(f"{n}.{kind}_down", c, c, self.kernel, self.kv_stride, c, None))
            parts.append(Conv(f"{n}.{kind}", c, dim))
        parts.append(Conv(f"{n}.output", self.heads * self.value_dim, c))
        if self.layer_scale:
            parts.append(LayerScale(f"{n}.layer_scale", c))
        return parts


Block = (ConvBN | DepthwiseSeparable | InvertedResidual | ShuffleUnit | MaxPool | EdgeResidual
         | UniversalInvertedResidual | MobileAttention)


@dataclasses.dataclass(frozen=True)
class Head:
    """Global average pool, [1x1 conv with bias + activation], dropout, classifier."""

    in_ch: int
    hidden: int | None  # MobileNetV3's 1280/1024 conv; None for V1 and ShuffleNet
    hidden_act: str | None
    num_classes: int
    classifier_bias: bool
    hidden_bn: bool = False  # MobileNetV4: the head conv has BatchNorm (after it, before the act), no bias


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    width: float
    groups: int | None
    blocks: tuple
    head: Head
    convention: str = "timm"  # CONVENTIONS: whose network this is (see the module docstring)
    variant: str | None = None  # MobileNetV4's model.variant (MOBILENET_V4_WIDTHS); None for the other families

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


def mobilenet_v1(width: float, num_classes: int, convention: str = "timm") -> Architecture:
    if convention == "mindcv":  # mindcv: int(c * alpha) (the same channels at its four widths) and ReLU
        ch, act = (lambda c: int(c * width)), "relu"  # noqa: E731
    else:  # ReLU6 as in TF-slim, Keras and timm (the paper says ReLU; trained weights assume ReLU6)
        ch, act = (lambda c: make_divisible(c * width)), "relu6"  # noqa: E731
    stem = ConvBN("stem", 3, ch(32), 3, 2, 1, act)
    blocks, in_ch = [stem], stem.out_ch
    stages = stage_indices([out for out, _ in MOBILENET_V1_BLOCKS])
    for i, ((out, stride), stage) in enumerate(zip(MOBILENET_V1_BLOCKS, stages)):
        blocks.append(DepthwiseSeparable(f"blocks.{i}", in_ch, ch(out), 3, stride, act, None,
                                         pw_act=True, residual=False, stage=stage))
        in_ch = ch(out)
    head = Head(in_ch, None, None, num_classes, classifier_bias=True)
    return Architecture("mobilenet_v1", width, None, tuple(blocks), head, convention)


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
# mindcv's expansion sizes (its table's `e` column, the paper's "exp size"), scaled by width as they stand;
# timm scales the ratio of the *rounded* input instead, which differs below width 1.0.
MINDCV_V3_EXPANSION = {"mobilenet_v3_large": (16, 64, 72, 72, 120, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960),
                       "mobilenet_v3_small": (16, 72, 88, 96, 240, 240, 120, 144, 288, 576, 576)}


def mobilenet_v3(name: str, width: float, num_classes: int, convention: str = "timm") -> Architecture:
    """timm's network, or mindcv's: depthwise convs padded "same", expansion make_divisible(width * e),
    last conv 6 x its input, head conv scaled with width (timm: 1280 / 1024 at every width)."""
    table = MOBILENET_V3_LARGE if name == "mobilenet_v3_large" else MOBILENET_V3_SMALL
    mindcv = convention == "mindcv"
    ch = lambda c: make_divisible(c * width)  # noqa: E731
    stem_ch = ch(16) if mindcv or width >= 0.75 else 16  # timm fixes the stem below width 0.75
    stem = ConvBN("stem", 3, stem_ch, 3, 2, 1, "hard_swish")
    blocks, in_ch = [stem], stem.out_ch
    padding = "same" if mindcv else "symmetric"
    stages = stage_indices([row[2] for row in table])
    for i, ((k, ratio, out, use_se, act, stride), stage) in enumerate(zip(table, stages)):
        out_ch, block_name = ch(out), f"blocks.{i}"
        mid = ch(MINDCV_V3_EXPANSION[name][i]) if mindcv else in_ch if ratio == 1 else make_divisible(in_ch * ratio)
        se = SqueezeExcite(f"{block_name}.se", mid, make_divisible(mid * 0.25)) if use_se else None
        if mid == in_ch:  # no expansion conv: timm's DepthwiseSeparableConv, mindcv's Bottleneck without one
            residual = stride == 1 and in_ch == out_ch
            blocks.append(DepthwiseSeparable(block_name, in_ch, out_ch, k, stride, act, se, pw_act=False,
                                             residual=residual, stage=stage, dw_padding=padding))
        else:
            blocks.append(InvertedResidual(block_name, in_ch, mid, out_ch, k, stride, act, se, stage, padding))
        in_ch = out_ch
    last, hidden = MOBILENET_V3_TAIL[name]
    last_ch, hidden = (in_ch * 6, ch(hidden)) if mindcv else (ch(last), hidden)
    blocks.append(ConvBN("final", in_ch, last_ch, 1, 1, 1, "hard_swish"))
    head = Head(last_ch, hidden, "hard_swish", num_classes, classifier_bias=True)
    return Architecture(name, width, None, tuple(blocks), head, convention)


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


def shufflenet_v1(width: float, groups: int, num_classes: int, convention: str = "timm") -> Architecture:
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
    return Architecture("shufflenet_v1", width, groups, tuple(blocks), head, convention)  # mindcv's under both


# ----------------------------------------------------------------------------- MobileNetV2

# Paper Table 2: expansion t, output channels c, repeats n, stride s of the first repeat; one timm stage per row.
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


def mobilenet_v2(width: float, num_classes: int, convention: str = "timm") -> Architecture:
    """timm's `mobilenetv2_*`: ReLU6, stem and every block width-scaled, expansion of the rounded input,
    a last 1x1 ConvBN of max(1280, 1280 x width) before the pool (1792 at 1.4), classifier with bias."""
    ch = lambda c: make_divisible(c * width)  # noqa: E731
    stem = ConvBN("stem", 3, ch(32), 3, 2, 1, "relu6")
    blocks, in_ch = [stem], stem.out_ch
    for stage, (t, c, n, s) in enumerate(MOBILENET_V2):
        for i in range(n):
            name, stride, out_ch = f"blocks.{len(blocks) - 1}", s if i == 0 else 1, ch(c)
            if t == 1:
                blocks.append(DepthwiseSeparable(name, in_ch, out_ch, 3, stride, "relu6", None, pw_act=False,
                                                 residual=stride == 1 and in_ch == out_ch, stage=stage))
            else:
                blocks.append(InvertedResidual(name, in_ch, make_divisible(in_ch * t), out_ch, 3, stride, "relu6",
                                               None, stage))
            in_ch = out_ch
    blocks.append(ConvBN("final", in_ch, max(1280, ch(1280)), 1, 1, 1, "relu6"))
    head = Head(blocks[-1].out_ch, None, None, num_classes, classifier_bias=True)
    return Architecture("mobilenet_v2", width, None, tuple(blocks), head, convention)


# ----------------------------------------------------------------------------- MobileNetV4

# timm's _gen_mobilenet_v4 (paper Tables 11-15), one tuple of rows per stage; rows are
#   ("conv", repeats, kernel, stride, out)                    ConvBN
#   ("fused", repeats, kernel, stride, expansion, out)        EdgeResidual (FusedIB)
#   ("uib", repeats, start_k, mid_k, stride, expansion, out)  UniversalInvertedResidual (0: no such depthwise)
#   ("mqa", repeats, kernel, heads, kv_stride, key_dim, out)  MobileAttention (value_dim = key_dim)
# The stride applies to a stage's first block; every variant ends in ("conv", 1, 1, 1, 960) (the "final"
# block), then the head: pool, 1x1 conv to 1280 + BN + act, classifier.
_MEDIUM_STEM_STAGES = ((("fused", 1, 3, 2, 4, 48),), (("uib", 1, 3, 5, 2, 4, 80), ("uib", 1, 3, 3, 1, 2, 80)))
_LARGE_STEM_STAGES = ((("fused", 1, 3, 2, 4, 48),), (("uib", 1, 3, 5, 2, 4, 96), ("uib", 1, 3, 3, 1, 4, 96)))
MOBILENET_V4 = {
    # variant: (stem channels, activation, layer scale, stages)
    "conv_small": (32, "relu", False, (
        (("conv", 1, 3, 2, 32), ("conv", 1, 1, 1, 32)),
        (("conv", 1, 3, 2, 96), ("conv", 1, 1, 1, 64)),
        (("uib", 1, 5, 5, 2, 3, 96), ("uib", 4, 0, 3, 1, 2, 96), ("uib", 1, 3, 0, 1, 4, 96)),
        (("uib", 1, 3, 3, 2, 6, 128), ("uib", 1, 5, 5, 1, 4, 128), ("uib", 1, 0, 5, 1, 4, 128),
         ("uib", 1, 0, 5, 1, 3, 128), ("uib", 2, 0, 3, 1, 4, 128)),
    )),
    "conv_medium": (32, "relu", False, _MEDIUM_STEM_STAGES + (
        (("uib", 1, 3, 5, 2, 6, 160), ("uib", 2, 3, 3, 1, 4, 160), ("uib", 1, 3, 5, 1, 4, 160),
         ("uib", 1, 3, 3, 1, 4, 160), ("uib", 1, 3, 0, 1, 4, 160), ("uib", 1, 0, 0, 1, 2, 160),
         ("uib", 1, 3, 0, 1, 4, 160)),
        (("uib", 1, 5, 5, 2, 6, 256), ("uib", 1, 5, 5, 1, 4, 256), ("uib", 2, 3, 5, 1, 4, 256),
         ("uib", 1, 0, 0, 1, 4, 256), ("uib", 1, 3, 0, 1, 4, 256), ("uib", 1, 3, 5, 1, 2, 256),
         ("uib", 1, 5, 5, 1, 4, 256), ("uib", 2, 0, 0, 1, 4, 256), ("uib", 1, 5, 0, 1, 2, 256)),
    )),
    "conv_large": (24, "relu", False, _LARGE_STEM_STAGES + (
        (("uib", 1, 3, 5, 2, 4, 192), ("uib", 3, 3, 3, 1, 4, 192), ("uib", 1, 3, 5, 1, 4, 192),
         ("uib", 5, 5, 3, 1, 4, 192), ("uib", 1, 3, 0, 1, 4, 192)),
        (("uib", 4, 5, 5, 2, 4, 512), ("uib", 1, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512),
         ("uib", 2, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512), ("uib", 1, 5, 5, 1, 4, 512),
         ("uib", 3, 5, 0, 1, 4, 512)),
    )),
    "hybrid_medium": (32, "relu", True, _MEDIUM_STEM_STAGES + (
        (("uib", 1, 3, 5, 2, 6, 160), ("uib", 1, 0, 0, 1, 2, 160), ("uib", 1, 3, 3, 1, 4, 160),
         ("uib", 1, 3, 5, 1, 4, 160), ("mqa", 1, 3, 4, 2, 64, 160), ("uib", 1, 3, 3, 1, 4, 160),
         ("mqa", 1, 3, 4, 2, 64, 160), ("uib", 1, 3, 0, 1, 4, 160), ("mqa", 1, 3, 4, 2, 64, 160),
         ("uib", 1, 3, 3, 1, 4, 160), ("mqa", 1, 3, 4, 2, 64, 160), ("uib", 1, 3, 0, 1, 4, 160)),
        (("uib", 1, 5, 5, 2, 6, 256), ("uib", 1, 5, 5, 1, 4, 256), ("uib", 2, 3, 5, 1, 4, 256),
         ("uib", 1, 0, 0, 1, 2, 256), ("uib", 1, 3, 5, 1, 2, 256), ("uib", 1, 0, 0, 1, 2, 256),
         ("uib", 1, 0, 0, 1, 4, 256), ("mqa", 1, 3, 4, 1, 64, 256), ("uib", 1, 3, 0, 1, 4, 256),
         ("mqa", 1, 3, 4, 1, 64, 256), ("uib", 1, 5, 5, 1, 4, 256), ("mqa", 1, 3, 4, 1, 64, 256),
         ("uib", 1, 5, 0, 1, 4, 256), ("mqa", 1, 3, 4, 1, 64, 256), ("uib", 1, 5, 0, 1, 4, 256)),
    )),
    "hybrid_large": (24, "gelu", True, _LARGE_STEM_STAGES + (
        (("uib", 1, 3, 5, 2, 4, 192), ("uib", 3, 3, 3, 1, 4, 192), ("uib", 1, 3, 5, 1, 4, 192),
         ("uib", 2, 5, 3, 1, 4, 192), ("mqa", 1, 3, 8, 2, 48, 192), ("uib", 1, 5, 3, 1, 4, 192),
         ("mqa", 1, 3, 8, 2, 48, 192), ("uib", 1, 5, 3, 1, 4, 192), ("mqa", 1, 3, 8, 2, 48, 192),
         ("uib", 1, 5, 3, 1, 4, 192), ("mqa", 1, 3, 8, 2, 48, 192), ("uib", 1, 3, 0, 1, 4, 192)),
        (("uib", 4, 5, 5, 2, 4, 512), ("uib", 1, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512),
         ("uib", 2, 5, 0, 1, 4, 512), ("uib", 1, 5, 3, 1, 4, 512), ("uib", 1, 5, 5, 1, 4, 512),
         ("mqa", 1, 3, 8, 1, 64, 512), ("uib", 1, 5, 0, 1, 4, 512), ("mqa", 1, 3, 8, 1, 64, 512),
         ("uib", 1, 5, 0, 1, 4, 512), ("mqa", 1, 3, 8, 1, 64, 512), ("uib", 1, 5, 0, 1, 4, 512),
         ("mqa", 1, 3, 8, 1, 64, 512), ("uib", 1, 5, 0, 1, 4, 512)),
    )),
}
_V4_STRIDE_COLUMN = {"conv": 1, "fused": 1, "uib": 2}  # where a row (after its repeats) has its stride
MOBILENET_V4_FINAL, MOBILENET_V4_HEAD = 960, 1280  # the final conv is width-scaled, the head conv never


def mobilenet_v4(variant: str, width: float, num_classes: int, convention: str = "timm") -> Architecture:
    """timm's `mobilenetv4_*`: outputs make_divisible(c x width), expansions of the rounded input, the stem
    fixed below width 1.0, layer scale (timm init 1e-5) on every UIB and attention block of the hybrids."""
    stem_ch, act, layer_scale, stages = MOBILENET_V4[variant]
    ch = lambda c: make_divisible(c * width)  # noqa: E731
    stem = ConvBN("stem", 3, stem_ch if width < 1.0 else ch(stem_ch), 3, 2, 1, act)
    blocks, in_ch = [stem], stem.out_ch
    for stage, rows in enumerate(stages):
        first = True
        for kind, repeats, *args in rows:
            for _ in range(repeats):
                name, out_ch = f"blocks.{len(blocks) - 1}", ch(args[-1])
                stride = args[_V4_STRIDE_COLUMN[kind]] if first and kind in _V4_STRIDE_COLUMN else 1
                first = False
                if kind == "conv":
                    block = ConvBN(name, in_ch, out_ch, args[0], stride, 1, act, stage=stage)
                elif kind == "fused":
                    block = EdgeResidual(name, in_ch, make_divisible(in_ch * args[2]), out_ch, args[0], stride, act,
                                         stage)
                elif kind == "uib":
                    start_k, mid_k, _, expansion, _ = args
                    block = UniversalInvertedResidual(name, in_ch, make_divisible(in_ch * expansion), out_ch, start_k,
                                                      mid_k, 0, stride, act, layer_scale, stage)
                else:
                    kernel, heads, kv_stride, key_dim, _ = args
                    if out_ch != in_ch:
                        raise ValueError(f"{name}: an attention block keeps its channels ({in_ch} -> {out_ch})")
                    block = MobileAttention(name, in_ch, heads, key_dim, key_dim, kv_stride, kernel, layer_scale,
                                            stage)
                blocks.append(block)
                in_ch = out_ch
    blocks.append(ConvBN("final", in_ch, ch(MOBILENET_V4_FINAL), 1, 1, 1, act))
    head = Head(blocks[-1].out_ch, MOBILENET_V4_HEAD, act, num_classes, classifier_bias=True, hidden_bn=True)
    return Architecture("mobilenet_v4", width, None, tuple(blocks), head, convention, variant)


# ----------------------------------------------------------------------------- entry point


def build_architecture(name: str, width: float = 1.0, groups: int | None = None,
                       num_classes: int = 1000, convention: str = "timm", variant: str | None = None) -> Architecture:
    """Resolve a family + width (+ groups, or MobileNetV4's variant) into concrete blocks; raise ValueError
    naming the fix."""
    if convention not in CONVENTIONS:
        raise ValueError(f"model.convention={convention!r} is not one of: {', '.join(CONVENTIONS)}")
    if convention == "mindcv" and name in MINDCV_WIDTHS and (
            float(width) not in MINDCV_WIDTHS[name] or (name == "shufflenet_v1" and groups not in MINDCV_SHUFFLENET_GROUPS)):
        raise ValueError(f"model.convention='mindcv' has no {name} width={width}"
                         f"{f' groups={groups}' if name == 'shufflenet_v1' else ''}; mindcv's: widths "
                         f"{', '.join(map(str, MINDCV_WIDTHS[name]))}"
                         f"{', groups 3, 8' if name == 'shufflenet_v1' else ''} (or model.convention='timm')")
    if name not in MODEL_NAMES:
        raise ValueError(f"model.name={name!r} is not a known model; choose one of {', '.join(MODEL_NAMES)}")
    if name in ("mobilenet_v2", "mobilenet_v4") and convention != "timm":
        raise ValueError(f"model.convention={convention!r} is not defined for {name}; use model.convention='timm'")
    if name == "mobilenet_v4":
        if variant not in MOBILENET_V4_WIDTHS:
            raise ValueError(f"model.variant={variant!r} is not a mobilenet_v4 variant; choose one of "
                             f"{', '.join(MOBILENET_V4_WIDTHS)}")
        widths = MOBILENET_V4_WIDTHS[variant]
        if float(width) not in widths:
            raise ValueError(f"model.width={float(width)} is not supported for mobilenet_v4 {variant}; "
                             f"supported widths: {', '.join(map(str, widths))}")
    elif variant:
        raise ValueError(f"model.variant={variant!r} applies to mobilenet_v4 only; leave it unset (None) for {name}")
    width = float(width)
    if name != "mobilenet_v4" and width not in SUPPORTED_WIDTHS[name]:
        raise ValueError(f"model.width={width} is not supported for {name}; "
                         f"supported widths: {', '.join(str(w) for w in SUPPORTED_WIDTHS[name])}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model.num_classes={num_classes!r} must be a positive integer")
    if name == "shufflenet_v1":
        if groups not in SHUFFLENET_GROUPS:
            raise ValueError(f"model.groups={groups!r} is not supported for shufflenet_v1; "
                             f"supported groups: {', '.join(map(str, SHUFFLENET_GROUPS))}")
        return shufflenet_v1(width, groups, num_classes, convention)
    if groups not in (None, 1):
        raise ValueError(f"model.groups={groups!r} applies to shufflenet_v1 only; leave it unset (None) for {name}")
    if name == "mobilenet_v1":
        return mobilenet_v1(width, num_classes, convention)
    if name == "mobilenet_v2":
        return mobilenet_v2(width, num_classes, convention)
    if name == "mobilenet_v4":
        return mobilenet_v4(variant, width, num_classes, convention)
    return mobilenet_v3(name, width, num_classes, convention)


def architecture_from_config(model_cfg, convention: str | None = None) -> Architecture:
    """Build from a config's `model` section (a ConfigDict or any object with those attributes);
    `convention` (a weight file's) overrides model.convention."""
    convention = convention or model_cfg.get("convention", None) or "timm"
    return build_architecture(model_cfg.name, model_cfg.width, model_cfg.get("groups"), model_cfg.num_classes,
                              convention, model_cfg.get("variant", None))


def same_function(a: Architecture, b: Architecture) -> bool:
    """Whether two architectures (e.g. one network under both conventions) compute the same function of
    the same weights: the same blocks and head, whoever's names they go by."""
    return a.blocks == b.blocks and a.head == b.head


# ----------------------------------------------------------------------------- derived facts


def leaf_layers(arch: Architecture, attention_whole: bool = False):
    """Every ConvBN / SqueezeExcite / MaxPool (/ Conv / Norm / LayerScale) in forward order (blocks expanded
    into their parts; MobileAttention blocks whole when `attention_whole`)."""
    for block in arch.blocks:
        if hasattr(block, "parts") and not (attention_whole and isinstance(block, MobileAttention)):
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
        elif isinstance(layer, Conv):
            shapes[f"{layer.name}.weight"] = ((layer.out_ch, layer.in_ch, 1, 1), True)
        elif isinstance(layer, Norm):
            for stat, trainable in (("scale", True), ("bias", True), ("mean", False), ("var", False)):
                shapes[f"{layer.name}.bn.{stat}"] = ((layer.channels,), trainable)
        elif isinstance(layer, LayerScale):
            shapes[f"{layer.name}.gamma"] = ((layer.channels,), True)
    head = arch.head
    if head.hidden:
        shapes["head.conv.weight"] = ((head.hidden, head.in_ch, 1, 1), True)
        if head.hidden_bn:
            for stat, trainable in (("scale", True), ("bias", True), ("mean", False), ("var", False)):
                shapes[f"head.bn.{stat}"] = ((head.hidden,), trainable)
        else:
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


def conv_out(size: int, kernel: int, stride: int, padding: str = "symmetric") -> int:
    """Output size of a convolution padded by kernel // 2 on both sides (or "same": ceil(size / stride))."""
    if padding == "same":
        return -(-size // stride)
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def same_padding(size: int, kernel: int, stride: int) -> tuple:
    """(before, after) padding of TF / MindSpore "same" mode; output size is ceil(size / stride)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def count_macs(arch: Architecture, image_size: int = 224) -> int:
    """Multiply-adds of one forward pass: convolutions, dense layers and attention's two matrix products
    (what FLOP counters count)."""
    size, macs = image_size, 0
    for layer in leaf_layers(arch, attention_whole=True):
        if isinstance(layer, MobileAttention):
            macs += attention_macs(layer, size)
        elif isinstance(layer, ConvBN):
            size = conv_out(size, layer.kernel, layer.stride, layer.padding)
            macs += size * size * layer.out_ch * (layer.in_ch // layer.groups) * layer.kernel ** 2
        elif isinstance(layer, SqueezeExcite):
            macs += 2 * layer.channels * layer.reduced
        elif isinstance(layer, MaxPool):
            size = -(-size // layer.stride)
    if arch.head.hidden:
        macs += arch.head.in_ch * arch.head.hidden
    macs += arch.num_features * arch.head.num_classes
    return macs


def attention_macs(block: MobileAttention, size: int) -> int:
    """Multiply-adds of a MobileAttention block on a size x size input (it keeps the size)."""
    c, pixels = block.channels, size * size
    kv_size = conv_out(size, block.kernel, block.kv_stride) if block.kv_stride > 1 else size
    kv_pixels = kv_size * kv_size
    macs = pixels * c * block.heads * block.key_dim  # query
    if block.kv_stride > 1:
        macs += 2 * kv_pixels * c * block.kernel ** 2  # key and value depthwise downsampling
    macs += kv_pixels * c * (block.key_dim + block.value_dim)  # key, value
    macs += block.heads * pixels * kv_pixels * (block.key_dim + block.value_dim)  # q k^T, attention x v
    return macs + pixels * block.heads * block.value_dim * c  # output
