"""A depthwise convolution whose input gradient MindSpore's CPU backend computes fast.

On CPU, MindSpore 2.10 computes the input gradient of a depthwise Conv2d (Conv2DBackpropInput
with group = channels) several times slower than the forward convolution: 316 ms against 53 ms
for a 32 x 128 x 56 x 56 batch and a 3 x 3 kernel, measured on the 2-core benchmark machine; in
MobileNetV1 these gradients are a fifth of the training step. With stride 1 and symmetric
padding k // 2 (odd k) that gradient is itself a depthwise convolution: the output gradient
correlated with the kernel flipped in both spatial axes, with the same padding. `DepthwiseConv2d`
runs it so (a custom bprop), and keeps MindSpore's own kernel gradient (Conv2DBackpropFilter),
which no formulation we tried beat: per-tap products and sums 16x slower (strided slices are
slow on MindSpore's CPU backend), a grouped convolution over the batch the same speed.
Stride 2 keeps MindSpore's gradient: dilating the output gradient (with concatenations, since
MindSpore's CPU pad is slower still) costs more than it saves.

The cell is an `nn.Conv2d` (same `weight` parameter, name, shape and initialisation), so
checkpoints and weight files do not know which form ran; `model.conv_impl` chooses, as on the
JAX engine: "auto" the fast form on CPU and MindSpore's own elsewhere (Ascend and GPU have
depthwise gradient kernels), "fast" always, "xla" never (the name of the reference path on both
engines). tests/test_ms_fast_conv.py proves values and gradients equal to nn.Conv2d's.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops
from mindspore.ops.operations._grad_ops import Conv2DBackpropFilter

CONV_IMPLS = ("auto", "fast", "xla")  # mobilenets_jax.layers.CONV_IMPLS


def resolve_impl(impl: str, device: str | None = None) -> str:
    """'fast' or 'xla' (MindSpore's own convolution) for `impl` on `device` (default: the context's)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"model.conv_impl={impl!r} is not one of {', '.join(CONV_IMPLS)}")
    if impl != "auto":
        return impl
    device = device or ms.get_context("device_target")
    return "fast" if device == "CPU" else "xla"


class _StrideOneDepthwise(nn.Cell):
    """y = depthwise_conv(x, w), stride 1, padding k // 2 on every side; the input gradient as a
    forward convolution with the flipped kernel, the kernel gradient MindSpore's own."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        pad = kernel // 2
        self.conv = ops.Conv2D(channels, kernel, mode=1, pad_mode="pad", pad=pad, stride=1, group=channels)
        self.kernel_grad = Conv2DBackpropFilter(channels, (kernel, kernel), pad_mode="pad", pad=(pad,) * 4,
                                                pad_list=(pad,) * 4, stride=(1, 1), group=channels)

    def construct(self, x, w):
        return self.conv(x, w)

    def bprop(self, x, w, out, dout):
        dx = self.conv(dout, ops.reverse(w, (2, 3)))
        dw = self.kernel_grad(dout, x, w.shape)
        return dx, dw


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d(channels, channels, kernel, stride, pad_mode="pad", padding=kernel // 2,
    group=channels, has_bias=False) (or pad_mode="same" when `same`: the same padding at stride 1
    and an odd kernel, one less before than after at stride 2), computed by `_StrideOneDepthwise`
    while `fast` (set by `use_impl`) where its form applies: stride 1 and an odd kernel."""

    def __init__(self, channels: int, kernel: int, stride: int, weight_init, same: bool = False):
        padding = {"pad_mode": "same"} if same else {"pad_mode": "pad", "padding": kernel // 2}
        super().__init__(channels, channels, kernel, stride, group=channels, has_bias=False,
                         weight_init=weight_init, **padding)
        self.applies = stride == 1 and kernel % 2 == 1
        self.fast = self.applies
        self.stride_one = _StrideOneDepthwise(channels, kernel)

    def construct(self, x):
        if self.fast and self.training:  # only a gradient differs; inference runs the plain op
            # The cast outside the custom-bprop cell, so that under AMP autodiff casts the
            # weight's gradient back to float32 (inside, the bprop would bypass it).
            return self.stride_one(x, ops.cast(self.weight, x.dtype))
        return self.conv2d(x, self.weight)


def use_impl(net: nn.Cell, impl: str) -> str:
    """Set every DepthwiseConv2d in `net` to `impl` (resolved on this process's device; build or
    rebuild the graph after). Returns the resolved 'fast' or 'xla'."""
    resolved = resolve_impl(impl)
    for _, cell in net.cells_and_names():
        if isinstance(cell, DepthwiseConv2d):
            cell.fast = cell.applies and resolved == "fast"
    return resolved
