"""Flax linen networks built by walking a `mobilenets_core.specs.Architecture`.

Nothing here knows a block table: every channel count, kernel, stride and activation comes from
the architecture, so this file is the same for every family. Module names follow the
canonical weight names (`blocks.3.dw` lives at params['blocks_3']['dw']), which keeps the
converter in `mobilenets_jax.weights` a plain rename plus kernel transposes.
"""
from __future__ import annotations

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilenets_core import specs
from mobilenets_jax import layers


def module_name(canonical: str) -> str:
    """Last component of a canonical prefix as a Flax module name: 'blocks.3' -> 'blocks_3'."""
    return re.sub(r"\.(\d+)$", r"_\1", canonical).split(".")[-1]


def activation(name: str | None):
    return {"relu": nn.relu, "relu6": nn.relu6, "hard_swish": nn.hard_swish,
            "gelu": functools.partial(nn.gelu, approximate=False), None: lambda x: x}[name]  # gelu: erf, as torch


def pad(kernel: int):
    return ((kernel // 2, kernel // 2),) * 2


def conv_padding(layer: specs.ConvBN, x) -> tuple:
    """((top, bottom), (left, right)) of `layer` on NHWC `x`: symmetric, or "same" (TF / MindSpore pad_mode="same")."""
    if layer.padding == "same":
        return tuple(specs.same_padding(size, layer.kernel, layer.stride) for size in x.shape[1:3])
    return pad(layer.kernel)


class ConvBN(nn.Module):
    layer: specs.ConvBN
    bn_eps: float
    bn_decay: float
    dtype: Any = jnp.float32
    conv_impl: str = "auto"  # see mobilenets_jax.layers: same parameters, different XLA program

    @nn.compact
    def __call__(self, x, train: bool):
        layer = self.layer
        x = nn.Conv(layer.out_ch, (layer.kernel, layer.kernel), (layer.stride, layer.stride),
                    padding=conv_padding(layer, x), feature_group_count=layer.groups, use_bias=False,
                    dtype=self.dtype, conv_general_dilated=layers.conv_general_dilated(self.conv_impl),
                    name="conv")(x)
        norm = layers.BatchNorm if layers.resolve_impl(self.conv_impl) == "fast" else nn.BatchNorm
        x = norm(use_running_average=not train, momentum=self.bn_decay, epsilon=self.bn_eps, dtype=self.dtype,
                 name="bn")(x)
        return activation(layer.act)(x)


class SqueezeExcite(nn.Module):
    layer: specs.SqueezeExcite
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Conv(self.layer.reduced, (1, 1), dtype=self.dtype, name="reduce")(s))
        s = nn.Conv(self.layer.channels, (1, 1), dtype=self.dtype, name="expand")(s)
        return x * nn.hard_sigmoid(s)


def batch_norm(conv_impl: str):
    """The BatchNorm module class of `conv_impl`: the fused training form on the fast path, Flax's otherwise."""
    return layers.BatchNorm if layers.resolve_impl(conv_impl) == "fast" else nn.BatchNorm


class Norm(nn.Module):
    """BatchNorm alone, as a module `bn` (canonical `<name>.bn.*`)."""

    bn_eps: float
    bn_decay: float
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        return batch_norm(self.conv_impl)(use_running_average=not train, momentum=self.bn_decay, epsilon=self.bn_eps,
                                          dtype=self.dtype, name="bn")(x)


class LayerScale(nn.Module):
    """x * gamma per channel; gamma starts at 1e-5 (timm's layer_scale_init_value for MobileNetV4)."""

    layer: specs.LayerScale

    @nn.compact
    def __call__(self, x, train: bool):
        gamma = self.param("gamma", nn.initializers.constant(1e-5), (self.layer.channels,), jnp.float32)
        return x * gamma.astype(x.dtype)


def pointwise(out_ch: int, name: str, dtype, conv_impl: str) -> nn.Conv:
    """A 1x1 convolution without bias (explicit zero padding, so the fast path takes it as a matmul)."""
    return nn.Conv(out_ch, (1, 1), padding=((0, 0), (0, 0)), use_bias=False, dtype=dtype,
                   conv_general_dilated=layers.conv_general_dilated(conv_impl), name=name)


class MobileAttention(nn.Module):
    """specs.MobileAttention: x + layer_scale(output(softmax(q k^T / sqrt(d)) v)) on BN(x); one key and one
    value shared by every head; channels head-major (timm's MultiQueryAttention2d)."""

    block: specs.MobileAttention
    bn_eps: float
    bn_decay: float
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool):
        b = self.block
        parts = {layer.name.rsplit(".", 1)[-1]: layer for layer in b.parts()}
        y = Norm(self.bn_eps, self.bn_decay, self.dtype, self.conv_impl, name="norm")(x, train)
        n, h, w, c = y.shape
        q = pointwise(b.heads * b.key_dim, "query", self.dtype, self.conv_impl)(y).reshape(n, h * w, b.heads, b.key_dim)
        kv = []
        for kind, dim in (("key", b.key_dim), ("value", b.value_dim)):
            t = y
            if b.kv_stride > 1:
                t = ConvBN(parts[f"{kind}_down"], self.bn_eps, self.bn_decay, self.dtype, self.conv_impl,
                           name=f"{kind}_down")(t, train)
            t = pointwise(dim, kind, self.dtype, self.conv_impl)(t)
            kv.append(t.reshape(n, -1, dim))
        k, v = kv
        logits = jnp.einsum("nlhd,npd->nhlp", q, k) * (b.key_dim ** -0.5)
        attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        o = jnp.einsum("nhlp,npd->nlhd", attention, v).reshape(n, h, w, b.heads * b.value_dim)
        o = pointwise(c, "output", self.dtype, self.conv_impl)(o)
        if b.layer_scale:
            o = LayerScale(parts["layer_scale"], name="layer_scale")(o, train)
        return x + o


def channel_shuffle(x, groups: int):
    """NHWC form of MegVII's NCHW reshape (C // g, g) -> transpose -> flatten."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, c // groups, groups).swapaxes(3, 4).reshape(n, h, w, c)


class Block(nn.Module):
    """A composite block (depthwise-separable, inverted residual, shuffle unit): its parts in
    order, then its residual or shortcut rule."""

    block: Any
    bn_eps: float
    bn_decay: float
    dtype: Any = jnp.float32
    conv_impl: str = "auto"

    def part(self, layer):
        if isinstance(layer, specs.SqueezeExcite):
            return SqueezeExcite(layer, self.dtype, name=module_name(layer.name))
        if isinstance(layer, specs.LayerScale):
            return LayerScale(layer, name=module_name(layer.name))
        return ConvBN(layer, self.bn_eps, self.bn_decay, self.dtype, self.conv_impl, name=module_name(layer.name))

    @nn.compact
    def __call__(self, x, train: bool):
        block = self.block
        y = x
        for i, layer in enumerate(block.parts()):
            y = self.part(layer)(y, train)
            if isinstance(block, specs.ShuffleUnit) and i == 0 and block.groups > 1:
                y = channel_shuffle(y, block.groups)
        if isinstance(block, specs.ShuffleUnit):
            if block.stride == 1:
                return nn.relu(x + y)
            shortcut = nn.avg_pool(x, (3, 3), (2, 2), padding="SAME", count_include_pad=False)
            return nn.relu(jnp.concatenate([shortcut, y], axis=-1))
        return x + y if block.residual else y


class Network(nn.Module):
    """NHWC images in, float32 logits out."""

    arch: specs.Architecture
    dropout: float = 0.0
    bn_eps: float = 1e-5
    bn_decay: float = 0.9
    dtype: Any = jnp.float32
    frozen_backbone: bool = False  # BatchNorm of the body keeps its running statistics when training
    conv_impl: str = "auto"  # auto | fast | xla: how depthwise / grouped convs are computed (layers.py)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        head_train, train = train, train and not self.frozen_backbone
        fast = layers.resolve_impl(self.conv_impl) == "fast"
        for block in self.arch.blocks:
            name = module_name(block.name)
            if isinstance(block, specs.MaxPool):
                x = nn.max_pool(x, (block.kernel,) * 2, (block.stride,) * 2, padding="SAME")
            elif isinstance(block, specs.ConvBN):
                x = ConvBN(block, self.bn_eps, self.bn_decay, self.dtype, self.conv_impl, name=name)(x, train)
            elif isinstance(block, specs.MobileAttention):
                x = MobileAttention(block, self.bn_eps, self.bn_decay, self.dtype, self.conv_impl, name=name)(x, train)
            else:
                x = Block(block, self.bn_eps, self.bn_decay, self.dtype, self.conv_impl, name=name)(x, train)
            if fast:
                # Every block's output is materialised: left free, XLA:CPU fuses the elementwise
                # tails of successive blocks (BatchNorm, activation, residual add) into later
                # fusions and recomputes them there, forward and backward (ShuffleNetV1 g3: a
                # third of the step). 8-12% more training images/s for MobileNetV3 and ShuffleNetV1.
                x = jax.lax.optimization_barrier(x)
        x = jnp.mean(x, axis=(1, 2), keepdims=True)
        head = self.arch.head
        if head.hidden:
            x = nn.Conv(head.hidden, (1, 1), use_bias=not head.hidden_bn, dtype=self.dtype, name="head_conv")(x)
            if head.hidden_bn:  # MobileNetV4: trains with the head (init.freeze=backbone), as timm's norm_head
                x = batch_norm(self.conv_impl)(use_running_average=not head_train, momentum=self.bn_decay,
                                               epsilon=self.bn_eps, dtype=self.dtype, name="head_bn")(x)
            x = activation(head.hidden_act)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout, deterministic=not head_train)(x)
        x = nn.Dense(head.num_classes, use_bias=head.classifier_bias, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)


HEAD_MODULES = ("classifier", "head_conv", "head_bn")  # what init.freeze=backbone leaves trainable


def build_network(model_cfg, dtype=jnp.float32, bn_eps: float | None = None, frozen_backbone: bool = False,
                  conv_impl: str | None = None, convention: str | None = None) -> Network:
    """The Network for a config's `model` section (bn_eps and convention may be overridden by a weight file).

    conv_impl: `model.conv_impl` when the config has that field, else "auto" (see layers.py)."""
    arch = specs.architecture_from_config(model_cfg, convention)
    eps = model_cfg.bn_eps if bn_eps is None else bn_eps
    impl = conv_impl or model_cfg.get("conv_impl", None) or "auto"
    layers.resolve_impl(impl)  # a bad name fails here, not inside a trace
    return Network(arch, float(model_cfg.dropout), float(eps), float(model_cfg.bn_decay), dtype, frozen_backbone,
                   impl)


def init_variables(network: Network, seed: int = 0, image_size: int = 224):
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(lambda rng: network.init(rng, dummy, train=False))(jax.random.key(seed))
