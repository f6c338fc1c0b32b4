"""MindSpore networks built by walking a `mobilenets_core.specs.Architecture`.

Nothing here knows a block table: channels, kernels, strides and activations all come from the
architecture, so this file is the same for every family. Cell attributes follow the
canonical weight names (`blocks.3.dw` lives at `net.blocks[3].dw`, with `.conv` and `.bn`), so
`mobilenets_ms.weights` is a plain rename of the BatchNorm parameters.

Every Cell's structure is fixed when it is built (flags are Python constants, absent layers are
`nn.Identity`), so the same code runs in PyNative and in graph mode.
"""
from __future__ import annotations

import contextlib
import io
import math

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mobilenets_core import specs
from mobilenets_ms import layers

# Flax's default kernel init (lecun_normal: variance 1 / fan_in, normal truncated at +-2 sigma),
# so both engines start from the same distribution. 0.8796... is the std of a unit normal
# truncated to [-2, 2]; dividing by it restores the intended variance.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


_numpy_bridge_primed = False


def prime_numpy_bridge() -> None:
    """Absorb MindSpore's one-time NumPy C-API failure.

    MindSpore 2.10's libmindspore_common is built against the NumPy 1.x C API. Under NumPy 2
    (which JAX needs in the shared environment) the first PyNative op taking a tuple argument
    (transpose, reshape, reduce) raises ImportError / SystemError once, while importing
    `numpy.core.multiarray`; every later op works. Run one such op here so users never see it."""
    global _numpy_bridge_primed
    if _numpy_bridge_primed:
        return
    _numpy_bridge_primed = True
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ops.reshape(ms.Tensor(np.zeros((1, 1), np.float32)), (1,))
    except (ImportError, SystemError) as e:
        if not (isinstance(e, ImportError) or isinstance(e.__cause__, ImportError)):
            raise


def _lecun_normal(rng: np.random.Generator, shape: tuple, fan_in: int) -> ms.Tensor:
    sample = rng.standard_normal(shape)
    outside = np.abs(sample) > 2.0
    while outside.any():
        sample[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(sample) > 2.0
    std = math.sqrt(1.0 / fan_in) / _TRUNCATED_NORMAL_STD
    return ms.Tensor((sample * std).astype(np.float32))


class HardSigmoid(nn.Cell):
    """relu6(x + 3) / 6 (not Keras-2's 0.2x + 0.5).

    MindSpore's fused kernel while `fused` (the default: one pass forward and backward instead
    of four), the composed ops otherwise (see `portable_activations`)."""

    def __init__(self):
        super().__init__()
        self.fused = True
        self.fused_op = ops.HSigmoid()

    def construct(self, x):
        if self.fused:
            return self.fused_op(x)
        return ops.relu6(x + 3.0) / 6.0


class HardSwish(nn.Cell):
    """x * relu6(x + 3) / 6, fused or composed like `HardSigmoid`."""

    def __init__(self):
        super().__init__()
        self.fused = True
        self.fused_op = ops.HSwish()

    def construct(self, x):
        if self.fused:
            return self.fused_op(x)
        return x * (ops.relu6(x + 3.0) / 6.0)


@contextlib.contextmanager
def portable_activations(net: nn.Cell):
    """Within this block `net`'s hard-swish and hard-sigmoid are composed of relu6, add, multiply
    and divide, which every export format has (MindSpore 2.10 cannot write HSwish to ONNX).
    Same values either way; build (compile) the graph inside the block."""
    cells = [cell for _, cell in net.cells_and_names() if isinstance(cell, (HardSwish, HardSigmoid))]
    for cell in cells:
        cell.fused = False
    try:
        yield net
    finally:
        for cell in cells:
            cell.fused = True


def activation(name: str | None) -> nn.Cell:
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "hard_swish":
        return HardSwish()
    if name == "gelu":
        return nn.GELU(approximate=False)  # erf, as torch's nn.GELU
    if name is None:
        return nn.Identity()
    raise ValueError(f"activation {name!r} is not known; choose one of {specs.ACTIVATIONS}")


def conv2d(rng, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
           bias: bool = False, padding: str = "symmetric") -> nn.Conv2d:
    """Conv padded symmetrically by kernel // 2 (PyTorch / timm), or padding="same" (pad_mode="same",
    mindcv's MobileNetV3 depthwise convs), weight OIHW; depthwise ones are layers.DepthwiseConv2d (an
    nn.Conv2d with a faster gradient on CPU)."""
    weight = _lecun_normal(rng, (out_ch, in_ch // groups, kernel, kernel), in_ch // groups * kernel * kernel)
    if groups > 1 and groups == in_ch == out_ch and not bias:
        return layers.DepthwiseConv2d(in_ch, kernel, stride, weight, same=padding == "same")
    if padding == "same":
        return nn.Conv2d(in_ch, out_ch, kernel, stride, pad_mode="same", group=groups, has_bias=bias,
                         weight_init=weight, bias_init="zeros" if bias else None)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, pad_mode="pad", padding=kernel // 2, group=groups,
                     has_bias=bias, weight_init=weight, bias_init="zeros" if bias else None)


class ConvBN(nn.Cell):
    """conv (no bias) -> BatchNorm -> activation; `spec` is a specs.ConvBN."""

    def __init__(self, spec: specs.ConvBN, bn_eps: float, bn_decay: float, rng):
        super().__init__()
        self.conv = conv2d(rng, spec.in_ch, spec.out_ch, spec.kernel, spec.stride, spec.groups, padding=spec.padding)
        # MindSpore's momentum is the running-average decay: running = momentum * running + (1 - momentum) * batch.
        self.bn = nn.BatchNorm2d(spec.out_ch, eps=bn_eps, momentum=bn_decay)
        self.act = activation(spec.act)

    def construct(self, x):
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Cell):
    """mean over H, W -> 1x1 conv (bias) -> ReLU -> 1x1 conv (bias) -> hard-sigmoid, times the input."""

    def __init__(self, spec: specs.SqueezeExcite, rng):
        super().__init__()
        self.reduce = conv2d(rng, spec.channels, spec.reduced, 1, bias=True)
        self.expand = conv2d(rng, spec.reduced, spec.channels, 1, bias=True)
        self.relu = nn.ReLU()
        self.gate = HardSigmoid()
        self.pool = ops.ReduceMean(keep_dims=True)

    def construct(self, x):
        s = self.pool(x, (2, 3))
        s = self.expand(self.relu(self.reduce(s)))
        return x * self.gate(s)


class Norm(nn.Cell):
    """BatchNorm alone, as the cell `bn` (canonical `<name>.bn.*`)."""

    def __init__(self, channels: int, bn_eps: float, bn_decay: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=bn_eps, momentum=bn_decay)

    def construct(self, x):
        return self.bn(x)


class LayerScale(nn.Cell):
    """x * gamma per channel; gamma starts at 1e-5 (timm's layer_scale_init_value for MobileNetV4)."""

    def __init__(self, spec: specs.LayerScale):
        super().__init__()
        self.gamma = ms.Parameter(ms.Tensor(np.full((spec.channels,), 1e-5, np.float32)), name="gamma")

    def construct(self, x):
        return x * ops.reshape(self.gamma.astype(x.dtype), (1, -1, 1, 1))


class MobileAttention(nn.Cell):
    """specs.MobileAttention: x + layer_scale(output(softmax(q k^T / sqrt(d)) v)) on BN(x); one key and one
    value shared by every head; channels head-major (timm's MultiQueryAttention2d)."""

    def __init__(self, block: specs.MobileAttention, bn_eps: float, bn_decay: float, rng):
        super().__init__()
        parts = {layer.name.rsplit(".", 1)[-1]: layer for layer in block.parts()}
        c = block.channels
        self.norm = Norm(c, bn_eps, bn_decay)
        self.query = conv2d(rng, c, block.heads * block.key_dim, 1)
        down = block.kv_stride > 1
        self.key_down = ConvBN(parts["key_down"], bn_eps, bn_decay, rng) if down else nn.Identity()
        self.key = conv2d(rng, c, block.key_dim, 1)
        self.value_down = ConvBN(parts["value_down"], bn_eps, bn_decay, rng) if down else nn.Identity()
        self.value = conv2d(rng, c, block.value_dim, 1)
        self.output = conv2d(rng, block.heads * block.value_dim, c, 1)
        self.layer_scale = LayerScale(parts["layer_scale"]) if block.layer_scale else nn.Identity()
        self.heads, self.key_dim, self.value_dim = int(block.heads), int(block.key_dim), int(block.value_dim)
        self.scale = float(block.key_dim ** -0.5)
        self.matmul = ops.BatchMatMul()
        self.softmax = nn.Softmax(axis=-1)

    def construct(self, x):
        y = self.norm(x)
        n, _, h, w = y.shape
        q = ops.reshape(self.query(y), (n, self.heads, self.key_dim, h * w))
        q = ops.reshape(ops.transpose(q, (0, 1, 3, 2)), (n, self.heads * h * w, self.key_dim))
        k = ops.reshape(self.key(self.key_down(y)), (n, self.key_dim, -1))  # (n, key_dim, kv pixels)
        v = ops.transpose(ops.reshape(self.value(self.value_down(y)), (n, self.value_dim, -1)), (0, 2, 1))
        attention = self.softmax(self.matmul(q, k) * self.scale)  # (n, heads * pixels, kv pixels)
        o = ops.reshape(self.matmul(attention, v), (n, self.heads, h * w, self.value_dim))
        o = ops.reshape(ops.transpose(o, (0, 1, 3, 2)), (n, self.heads * self.value_dim, h, w))
        return x + self.layer_scale(self.output(o))


def part_name(layer) -> str:
    """Attribute name of a block's part: 'blocks.3.dw' -> 'dw'."""
    return layer.name.rsplit(".", 1)[-1]


def build_part(layer, bn_eps: float, bn_decay: float, rng) -> nn.Cell:
    if isinstance(layer, specs.ConvBN):
        return ConvBN(layer, bn_eps, bn_decay, rng)
    if isinstance(layer, specs.SqueezeExcite):
        return SqueezeExcite(layer, rng)
    if isinstance(layer, specs.LayerScale):
        return LayerScale(layer)
    raise TypeError(f"{layer.name}: a block part must be ConvBN, SqueezeExcite or LayerScale, got {type(layer).__name__}")


class SequentialBlock(nn.Cell):
    """DepthwiseSeparable / InvertedResidual / EdgeResidual / UniversalInvertedResidual: the block's parts in
    order, plus the input if residual."""

    def __init__(self, block, bn_eps: float, bn_decay: float, rng):
        super().__init__()
        for layer in block.parts():
            setattr(self, part_name(layer), build_part(layer, bn_eps, bn_decay, rng))
        self.layers = [getattr(self, part_name(layer)) for layer in block.parts()]
        self.residual = bool(block.residual)

    def construct(self, x):
        y = x
        for layer in self.layers:
            y = layer(y)
        if self.residual:
            y = y + x
        return y


def channel_shuffle(x, groups: int):
    """MegVII / mindcv order: (N, C/g, g, H, W) -> swap the two channel axes -> (N, C, H, W)."""
    n, c, h, w = x.shape
    x = ops.reshape(x, (n, c // groups, groups, h, w))
    x = ops.transpose(x, (0, 2, 1, 3, 4))
    return ops.reshape(x, (n, c, h, w))


class ShuffleUnit(nn.Cell):
    """reduce -> channel shuffle -> dw -> expand. Stride 1: ReLU(x + main);
    stride 2: ReLU(concat(avgpool3x3s2(x), main)) over channels (see specs.ShuffleUnit)."""

    def __init__(self, block: specs.ShuffleUnit, bn_eps: float, bn_decay: float, rng):
        super().__init__()
        reduce, dw, expand = block.parts()
        self.reduce = build_part(reduce, bn_eps, bn_decay, rng)
        self.dw = build_part(dw, bn_eps, bn_decay, rng)
        self.expand = build_part(expand, bn_eps, bn_decay, rng)
        self.groups = int(block.groups)
        self.shuffle = block.groups > 1
        self.downsample = block.stride == 2
        self.relu = nn.ReLU()
        # "same" padding (nothing before, one after on even sizes), padding excluded from the mean.
        self.shortcut_pool = nn.AvgPool2d(3, 2, pad_mode="same")

    def construct(self, x):
        y = self.reduce(x)
        if self.shuffle:
            y = channel_shuffle(y, self.groups)
        y = self.expand(self.dw(y))
        if self.downsample:
            return self.relu(ops.concat((self.shortcut_pool(x), y), 1))
        return self.relu(x + y)


class MaxPool(nn.Cell):
    """k x k max-pool with "same" padding (see specs.MaxPool)."""

    def __init__(self, spec: specs.MaxPool):
        super().__init__()
        self.pool = nn.MaxPool2d(spec.kernel, spec.stride, pad_mode="same")

    def construct(self, x):
        return self.pool(x)


def build_block(block, bn_eps: float, bn_decay: float, rng) -> nn.Cell:
    if isinstance(block, specs.ConvBN):
        return ConvBN(block, bn_eps, bn_decay, rng)
    if isinstance(block, specs.MaxPool):
        return MaxPool(block)
    if isinstance(block, (specs.DepthwiseSeparable, specs.InvertedResidual, specs.EdgeResidual,
                          specs.UniversalInvertedResidual)):
        return SequentialBlock(block, bn_eps, bn_decay, rng)
    if isinstance(block, specs.MobileAttention):
        return MobileAttention(block, bn_eps, bn_decay, rng)
    if isinstance(block, specs.ShuffleUnit):
        return ShuffleUnit(block, bn_eps, bn_decay, rng)
    raise TypeError(f"{block.name}: unknown block type {type(block).__name__}")


class Head(nn.Cell):
    """Global average pool, [1x1 conv with bias (no BN) + activation], flatten.

    The dropout after it is `Network`'s `keep` input (see `dropout_keep`), not a MindSpore Dropout."""

    def __init__(self, head: specs.Head, dropout: float, rng, bn_eps: float = 1e-5, bn_decay: float = 0.9):
        super().__init__()
        self.pool = ops.ReduceMean(keep_dims=True)
        if head.hidden:
            self.conv = conv2d(rng, head.in_ch, head.hidden, 1, bias=not head.hidden_bn)
            # MobileNetV4: BatchNorm after the head conv (trains with the head under init.freeze=backbone)
            self.bn = nn.BatchNorm2d(head.hidden, eps=bn_eps, momentum=bn_decay) if head.hidden_bn else nn.Identity()
            self.act = activation(head.hidden_act)
        else:
            self.conv = nn.Identity()
            self.bn = nn.Identity()
            self.act = nn.Identity()
        self.flatten = nn.Flatten()
        self.dropout = float(dropout)

    def construct(self, x):
        x = self.pool(x, (2, 3))
        x = self.act(self.bn(self.conv(x)))
        return self.flatten(x)


_DROPOUT_STREAM = 0x0D120  # keeps the dropout's random stream apart from any other drawn from the same seed


def dropout_keep(rate: float, seed: int, step: int, rank: int, shape: tuple) -> np.ndarray | None:
    """The dropout of update `step` on rank `rank`: float32 `shape` (rows, features) of 0 (dropped, with
    probability `rate`) and 1 / (1 - rate) (kept); None when `rate` is 0.

    A pure function of (seed, step, rank), like the JAX engine's fold_in(rng, step): a resumed run
    drops what an uninterrupted one drops. MindSpore's Dropout keeps its random state inside the
    kernel, where no checkpoint reaches it (a resumed run started its sequence over), and on CPU its
    sequence also followed the thread scheduling (two fresh runs of one seed differed)."""
    if not rate:
        return None
    rng = np.random.default_rng([_DROPOUT_STREAM, int(seed), int(step), int(rank)])
    kept = rng.random(shape, dtype=np.float32) >= np.float32(rate)
    return kept.astype(np.float32) * np.float32(1.0 / (1.0 - rate))


class Network(nn.Cell):
    """NHWC float images in, logits (N, num_classes) out; `keep` (N, num_features), when given, multiplies
    the features before the classifier: the training step's dropout (`dropout_keep`).

    Blocks named `blocks.<i>` live in the cell list `blocks`; the others (stem, stem_pool, final)
    are attributes of their own name, run before or after the list as the architecture orders them.
    """

    def __init__(self, arch: specs.Architecture, dropout: float = 0.0, bn_eps: float = 1e-5,
                 bn_decay: float = 0.9, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.arch = arch
        self.bn_eps = float(bn_eps)
        before, numbered, after = [], [], []
        for block in arch.blocks:
            cell = build_block(block, bn_eps, bn_decay, rng)
            prefix, _, index = block.name.partition(".")
            if prefix == "blocks":
                if index != str(len(numbered)):
                    raise ValueError(f"{arch.name}: block {block.name} out of order (expected blocks.{len(numbered)})")
                numbered.append(cell)
            elif "." in block.name:
                raise ValueError(f"{arch.name}: block name {block.name!r} is neither 'blocks.<i>' nor a plain name")
            else:
                (after if numbered else before).append((block.name, cell))
        # Assigned in forward order, each child complete before assignment, so Parameter.name
        # (what checkpoints and optimizers see) equals the attribute path.
        for name, cell in before:
            setattr(self, name, cell)
        self.blocks = nn.CellList(numbered)
        for name, cell in after:
            setattr(self, name, cell)
        self.before = [cell for _, cell in before]
        self.after = [cell for _, cell in after]
        self.head = Head(arch.head, dropout, rng, bn_eps, bn_decay)
        self.classifier = nn.Dense(arch.num_features, arch.head.num_classes,
                                   weight_init=_lecun_normal(rng, (arch.head.num_classes, arch.num_features),
                                                             arch.num_features),
                                   bias_init="zeros", has_bias=arch.head.classifier_bias)

    def construct(self, x, keep=None):
        x = ops.transpose(x, (0, 3, 1, 2))
        for cell in self.before:
            x = cell(x)
        for cell in self.blocks:
            x = cell(x)
        for cell in self.after:
            x = cell(x)
        x = self.head(x)
        if keep is not None:
            x = x * keep.astype(x.dtype)
        return self.classifier(x)


def build_network(model_cfg, bn_eps: float | None = None, seed: int = 0, convention: str | None = None) -> Network:
    """The Network for a config's `model` section (bn_eps and convention may be overridden by a weight
    file); `model.conv_impl` picks the depthwise convolutions' form (mobilenets_ms.layers)."""
    arch = specs.architecture_from_config(model_cfg, convention)
    eps = model_cfg.bn_eps if bn_eps is None else bn_eps
    net = Network(arch, float(model_cfg.dropout), float(eps), float(model_cfg.bn_decay), seed)
    layers.use_impl(net, str(model_cfg.get("conv_impl", None) or "auto"))
    return net
