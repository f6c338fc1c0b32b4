"""Depthwise and grouped convolutions that XLA compiles well, forward and backward.

XLA lowers `feature_group_count` convolutions to a generic grouped kernel that is slow on CPU,
and their gradients slower still (jax issue 13800): on a 2-core CPU one MobileNetV3-Small
training step spends most of its time there. The same arithmetic written as plain array ops
fuses into a few memory-bound loops:

- depthwise k x k: k*k shifted, strided slices of the padded input, each times one kernel row
  (a multiply-add per tap); its input gradient is the same loop over the (dilated) output
  gradient with the flipped kernel, its kernel gradient k*k sums of products;
- grouped 1x1 (ShuffleNetV1): one matrix multiply by the block-diagonal dense kernel.

`conv_general_dilated(impl)` returns a drop-in replacement for `lax.conv_general_dilated` for
`flax.linen.Conv`, so the parameters (names, shapes, initialisation) are exactly those of the
reference path, and checkpoints and canonical weights do not know which path ran. Convolutions
it has no faster form for go to `lax.conv_general_dilated` unchanged.

impl: "xla" always uses lax.conv_general_dilated (the reference), "fast" always the forms
above, "auto" the fast forms on CPU and XLA's own kernels on GPU/TPU (cuDNN has depthwise
kernels). Dense convolutions of an RGB (<= 4 channel) input, the stems, become k*k*C_in
broadcast multiply-adds on the fast path; wider dense k x k convolutions (MobileNetV4's fused
inverted bottlenecks) one matrix multiply over their patches. BatchNorm has its own training form here (one pass for
mean and variance, a fused backward). tests/test_fast_conv.py proves values and gradients equal
to the reference path, layer by layer and for whole networks; `model.conv_impl` chooses.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "fast", "xla")


def resolve_impl(impl: str, platform: str | None = None) -> str:
    """'fast' or 'xla' for `impl` on `platform` (default: the default backend's)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r} is not one of {', '.join(CONV_IMPLS)}")
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    return "fast" if platform == "cpu" else "xla"


# ----------------------------------------------------------------------------- depthwise


def _window(a, top: int, left: int, stride: tuple, out_hw: tuple):
    """a[:, top::sh, left::sw, :] cut to out_hw rows and columns."""
    n, _, _, c = a.shape
    (sh, sw), (ho, wo) = stride, out_hw
    return lax.slice(a, (0, top, left, 0), (n, top + (ho - 1) * sh + 1, left + (wo - 1) * sw + 1, c), (1, sh, sw, 1))


def _taps(xp, kernel: int, stride: tuple, out_hw: tuple):
    """(i, j, the window of xp at tap (i, j)) for every kernel tap."""
    for i in range(kernel):
        for j in range(kernel):
            yield i, j, _window(xp, i, j, stride, out_hw)


def _shifted_mac(xp, w, stride: tuple, out_hw: tuple):
    """sum over taps of strided slices of the padded input times the tap's per-channel weight.

    w: (k, k, C)."""
    return _tree_sum([tap * w[i, j] for i, j, tap in _taps(xp, w.shape[0], stride, out_hw)])


def _tree_sum(terms: list):
    """Pairwise sum: a dependency chain of log2(len) additions instead of len."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def _pad_hw(x, padding, interior: tuple = (0, 0)):
    (pt, pb), (pl, pr) = padding
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, interior[0]), (pl, pr, interior[1]), (0, 0, 0)))


def _out_size(size: int, pad: tuple, kernel: int, stride: int) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(x, w, stride: tuple, padding: tuple):
    """Depthwise convolution, NHWC input x, kernel w of shape (k, k, C) (HWIO's (k, k, 1, C) squeezed).

    stride: (sh, sw); padding: ((top, bottom), (left, right)), non-negative."""
    return _depthwise_fwd(x, w, stride, padding)[0]


def _depthwise_fwd(x, w, stride, padding):
    k = w.shape[0]
    out_hw = (_out_size(x.shape[1], padding[0], k, stride[0]), _out_size(x.shape[2], padding[1], k, stride[1]))
    # The padded input is written once, read by the k*k taps here and kept for the kernel
    # gradient. The barrier keeps XLA from fusing the pad, and whatever computed x (BatchNorm,
    # activation), into every tap slice, which writes each tap to memory separately.
    xp = lax.optimization_barrier(_pad_hw(x, padding))
    return _shifted_mac(xp, w, stride, out_hw), (xp, w)


def _dilated_padded_output_grad(g, k, in_hw, stride, padding):
    """(gp, (top, left)): g with (s - 1) zeros between rows/columns, padded so that the input
    gradient is a stride-1 correlation of gp with the flipped kernel; g sits in gp at rows
    top, top + sh, ... and columns left, left + sw, ...

    With gd = g dilated by the stride, dx[y] = sum_i gd[y + pad_lo - i] w[i]: gd padded by
    k - 1 - pad_lo before and cut to len(x) + k - 1."""
    (sh, sw), ((pt, _), (pl, _)) = stride, padding
    h, wd = in_hw
    _, ho, wo, _ = g.shape
    top, left = k - 1 - pt, k - 1 - pl
    gp = _pad_hw(g, ((top, h + pt - ((ho - 1) * sh + 1)), (left, wd + pl - ((wo - 1) * sw + 1))), (sh - 1, sw - 1))
    return lax.optimization_barrier(gp), (top, left)


def _sum_of_products(xp, g, kernel: int, stride: tuple, axes: tuple):
    """(k*k, C): for every tap, sum over n, y, x of xp[n, y*sh + i, x*sw + j, c] * g[n, y, x, c].

    One variadic reduce over `axes`, so all taps are summed in a single pass over xp and g (k*k
    separate reductions would each read both arrays again, and XLA:CPU hands them to a library
    call that needs every tap slice written out first); what is left is summed after."""
    products = tuple(tap * g for _, _, tap in _taps(xp, kernel, stride, g.shape[1:3]))
    zeros = tuple(jnp.zeros((), g.dtype) for _ in products)
    sums = lax.reduce(products, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), axes)
    return jnp.stack([partial.reshape(-1, g.shape[-1]).sum(axis=0) for partial in sums])


_CHUNK_BYTES = 2 << 20  # an L2/L3-sized slice of the batch for the kernel gradient


def _batch_chunk(n: int, bytes_per_example: int) -> int:
    """The largest divisor of n whose examples fit in _CHUNK_BYTES (at least 1)."""
    fitting = [d for d in range(1, n + 1) if n % d == 0 and d * bytes_per_example <= _CHUNK_BYTES]
    return max(fitting, default=1)


def _depthwise_kernel_grad(xp, gp, g_at, k, stride):
    """dw[i, j, c] = sum over n, y, x of xp[n, y*sh + i, x*sw + j, c] * g[n, y, x, c] (xp: padded
    input; g read from gp, the input gradient's dilated and padded copy, at g_at = (top, left),
    so that g itself need not be written to memory a second time).

    Summed a few examples at a time (a loop over batch chunks), so that the k*k products of one
    chunk are formed while it is still in cache: 3-6x faster than one pass over the batch. Where
    at least 4 examples fit in a chunk (the later, smaller layers), the chunk is first summed
    over its examples only: a plain vectorised accumulation over (y, x, c), 1.3-1.5x faster
    there than reducing all of (n, y, x) at once; on the large early layers it is slower. There,
    3x3 kernels over at least 32 channels are summed over (n, y) first, keeping rows of (x, c)
    side by side (1.1-1.6x faster than all of (n, y, x) at once; slower for 5x5 or 16 channels)."""
    n, c = xp.shape[0], xp.shape[-1]
    out_hw = ((xp.shape[1] - k) // stride[0] + 1, (xp.shape[2] - k) // stride[1] + 1)
    chunk = _batch_chunk(n, xp[0].size * xp.dtype.itemsize)
    if chunk >= 4:
        axes = (0,)
    elif k == 3 and c >= 32:
        axes = (0, 1)
    else:
        axes = (0, 1, 2)

    def chunk_sums(start, size):
        gs = _window(lax.dynamic_slice_in_dim(gp, start, size), *g_at, stride, out_hw)
        return _sum_of_products(lax.dynamic_slice_in_dim(xp, start, size), gs, k, stride, axes)

    if chunk == n:
        return chunk_sums(0, n).reshape(k, k, c)
    total = lax.fori_loop(0, n // chunk, lambda i, acc: acc + chunk_sums(i * chunk, chunk),
                          jnp.zeros((k * k, c), gp.dtype))
    return total.reshape(k, k, c)


def _depthwise_bwd(stride, padding, residuals, g):
    xp, w = residuals
    k = w.shape[0]
    (pt, pb), (pl, pr) = padding
    in_hw = (xp.shape[1] - pt - pb, xp.shape[2] - pl - pr)
    gp, g_at = _dilated_padded_output_grad(g, k, in_hw, stride, padding)
    dx = _shifted_mac(gp, w[::-1, ::-1], (1, 1), in_hw)
    dw = _depthwise_kernel_grad(xp, gp, g_at, k, stride)
    return dx, dw.astype(w.dtype)


depthwise_conv.defvjp(_depthwise_fwd, _depthwise_bwd)


# ----------------------------------------------------------------------------- grouped 1x1


def grouped_pointwise_conv(x, w, groups: int = 1):
    """1x1 convolution with `groups` groups as one matmul; w: HWIO (1, 1, C_in / g, C_out).

    As a dot, its gradients are dots too; XLA's gradient of a 1x1 convolution is a convolution
    with a window as large as the image, which XLA:CPU runs at a fraction of matmul speed. The
    groups' kernels go on the diagonal of one dense (C_in, C_out) matrix: g times the multiply-adds,
    but one plain matmul on NHWC rows, where a batched matmul over the groups (`mgi,gio->mgo`)
    makes XLA:CPU move the group axis to the front of activations and gradients and back
    (ShuffleNetV1 g3 trained 1.9x faster so)."""
    n, h, wd, c_in = x.shape
    c_out = w.shape[-1]
    if groups > 1:
        wg = w.reshape(c_in // groups, groups, c_out // groups).transpose(1, 0, 2)  # (g, in/g, out/g)
        w = jnp.einsum("gio,gh->giho", wg, jnp.eye(groups, dtype=w.dtype))  # block diagonal: (g, in/g, g, out/g)
    return (x.reshape(n * h * wd, c_in) @ w.reshape(c_in, c_out)).reshape(n, h, wd, c_out)


# ----------------------------------------------------------------------------- stems


_STEM_INPUTS = 4  # dense k x k convolutions with at most this many input channels: the RGB stems


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def stem_conv(x, w, stride: tuple, padding: tuple):
    """Dense k x k convolution of a few-channel image (w: HWIO, C_in <= 4) as k*k*C_in
    broadcast multiply-adds, one fused loop over the output (2x faster than XLA:CPU's generic
    convolution for 3 input channels). Its kernel gradient is `_stem_kernel_grad`; the image's
    gradient (never needed in training) is XLA's own."""
    k, _, c_in, _ = w.shape
    out_hw = (_out_size(x.shape[1], padding[0], k, stride[0]), _out_size(x.shape[2], padding[1], k, stride[1]))
    xp = _pad_hw(x, padding)
    return _tree_sum([tap[..., c:c + 1] * w[i, j, c] for i, j, tap in _taps(xp, k, stride, out_hw)
                      for c in range(c_in)])


def _stem_kernel_grad(x, g, k: int, stride: tuple, padding: tuple):
    """dw[i, j, c, o] = sum over n, y, x of xp[n, y*sh + i, x*sw + j, c] * g[n, y, x, o], as one
    (k*k*C_in, M) x (M, C_out) matmul per batch chunk over the chunk's patches (im2col). A chunk's
    patches are small enough to stay in cache, so nothing image-sized is written: 2-2.5x faster
    than XLA:CPU's convolution kernel gradient, which transposes both operands first."""
    n, c_in, c_out = x.shape[0], x.shape[-1], g.shape[-1]
    xp = _pad_hw(x, padding)
    rows = g.shape[1] * g.shape[2]
    chunk = _batch_chunk(n, rows * k * k * c_in * x.dtype.itemsize)

    def chunk_grad(xs, gs):
        patches = jnp.concatenate([tap for _, _, tap in _taps(xs, k, stride, gs.shape[1:3])], axis=3)
        m = gs.shape[0] * rows
        return lax.dot_general(patches.reshape(m, k * k * c_in), gs.reshape(m, c_out), (((0,), (0,)), ((), ())))

    if chunk == n:
        total = chunk_grad(xp, g)
    else:
        total = lax.fori_loop(0, n // chunk, lambda i, acc: acc + chunk_grad(
            lax.dynamic_slice_in_dim(xp, i * chunk, chunk), lax.dynamic_slice_in_dim(g, i * chunk, chunk)),
            jnp.zeros((k * k * c_in, c_out), g.dtype))
    return total.reshape(k, k, c_in, c_out)


def _stem_fwd(x, w, stride, padding):
    return stem_conv(x, w, stride, padding), (x, w)


def _stem_bwd(stride, padding, residuals, g):
    x, w = residuals
    _, pullback = jax.vjp(lambda x: lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=_NHWC), x)
    return pullback(g)[0], _stem_kernel_grad(x, g, w.shape[0], stride, padding).astype(w.dtype)


stem_conv.defvjp(_stem_fwd, _stem_bwd)


# ----------------------------------------------------------------------------- dense k x k


def dense_conv(x, w, stride: tuple, padding: tuple):
    """Dense k x k convolution (w: HWIO, C_in > _STEM_INPUTS) as one matmul over its patches
    (im2col): the k*k strided slices side by side, (M, k*k*C_in) x (k*k*C_in, C_out).

    Its gradients, by autodiff, are two matmuls and the slices' pads. MobileNetV4-Conv-Small's
    training step (two 3 x 3 convolutions of 32 channels at 112 and 56 px) ran 1.3x faster so than
    with XLA:CPU's convolution, whose kernel gradient transposes both operands first."""
    k, _, c_in, c_out = w.shape
    out_hw = (_out_size(x.shape[1], padding[0], k, stride[0]), _out_size(x.shape[2], padding[1], k, stride[1]))
    patches = jnp.concatenate([tap for _, _, tap in _taps(_pad_hw(x, padding), k, stride, out_hw)], axis=3)
    y = patches.reshape(-1, k * k * c_in) @ w.reshape(k * k * c_in, c_out)
    return y.reshape(x.shape[0], *out_hw, c_out)


# ----------------------------------------------------------------------------- batch norm


_FOLD_LANES = 512  # channels x folded columns summed side by side in the reduction's inner loop


def _channel_sums(*arrays):
    """Per-channel sums of NHWC arrays: one variadic reduce (a single pass over the data, XLA
    fuses the producers into it) down to (N, H, f*C), then the small remaining sums.

    f columns are folded into the channel axis, (N, H, W, C) -> (N, H, W/f, f*C): XLA:CPU's
    reduction loop vectorises over the kept minor axis, and 16 channels alone leave it idle
    (2-3x faster for the early layers). Summing in stages also keeps float32 rounding at the
    level of a pairwise sum, where one sequential sum over N*H*W values loses digits that
    E[x^2] - E[x]^2 then magnifies."""
    n, h, w, c = arrays[0].shape
    fold = max(f for f in range(1, w + 1) if w % f == 0 and f * c <= max(_FOLD_LANES, c))
    folded = tuple(a.reshape(n, h, w // fold, fold * c) for a in arrays)
    zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
    rows = lax.reduce(folded, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
    return tuple(r.reshape(n, h, fold, c).sum(axis=(1, 2)).sum(axis=0) for r in rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon: float):
    """(y, mean, var): BatchNorm with batch statistics, as flax.linen.BatchNorm computes them
    (biased variance, clipped at 0), with a hand-written backward pass. The one-pass variance is
    taken around a sample of each channel, E[(x-s)^2] - E[x-s]^2, which is exact algebra and
    loses fewer digits in float32 than Flax's E[x^2] - E[x]^2.

    Autodiff of the Flax formula leaves XLA several reductions per layer, each reading a
    materialised temporary; here the forward statistics and the backward sums are one pass each."""
    return _batch_norm_forward(x, scale, bias, epsilon)[0]


def _batch_norm_forward(x, scale, bias, epsilon):
    count = x.size // x.shape[-1]
    shift = lax.stop_gradient(x[0, 0, 0])  # any sample near the mean removes most of the cancellation
    shifted = x - shift
    total, total_sq = _channel_sums(shifted, shifted * shifted)
    shifted_mean = total / count
    mean = shift + shifted_mean
    var = jnp.maximum(0.0, total_sq / count - shifted_mean * shifted_mean)
    inv = lax.rsqrt(var + epsilon)
    y = (x - mean) * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    del epsilon
    x, mean, inv, scale = residuals
    g, g_mean, g_var = cotangents
    count = x.size // x.shape[-1]
    centered = x - mean
    g_bias, g_xhat = _channel_sums(g, g * (centered * inv))
    g_scale = g_xhat
    dx = (scale * inv) * (g - g_bias / count - (centered * inv) * (g_xhat / count))
    dx = dx + g_mean / count + centered * (2.0 * g_var / count)  # through the returned statistics
    return dx, g_scale, g_bias


batch_norm_train.defvjp(_batch_norm_forward, _batch_norm_bwd)


class BatchNorm(nn.Module):
    """flax.linen.BatchNorm over the last axis: the same variables (params scale, bias;
    batch_stats mean, var), initial values, running-average update and output, computed
    with `batch_norm_train` when training."""

    use_running_average: bool
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.use_running_average:
            y = (x32 - ra_mean.value) * (lax.rsqrt(ra_var.value + self.epsilon) * scale) + bias
        else:
            y, mean, var = batch_norm_train(x32, scale, bias, float(self.epsilon))
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(self.dtype or x.dtype)


# ----------------------------------------------------------------------------- dispatch


_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _is_nhwc(dimension_numbers) -> bool:
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return tuple(map(tuple, dimension_numbers)) == tuple(map(tuple, _NHWC))
    return dimension_numbers == ("NHWC", "HWIO", "NHWC")


def _explicit_padding(padding):
    if isinstance(padding, str):
        return None
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    return padding if len(padding) == 2 and all(v >= 0 for p in padding for v in p) else None


def fast_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                              dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                              precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated` with depthwise, grouped 1x1 and dense k x k NHWC convolutions rewritten."""
    plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and batch_group_count == 1
             and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
             and preferred_element_type is None)
    explicit = _explicit_padding(padding) if plain else None
    if explicit is not None and feature_group_count > 1:
        kh, kw, in_per_group, out = rhs.shape
        c_in = lhs.shape[-1]
        if kh == kw and in_per_group == 1 and feature_group_count == c_in and out == c_in \
                and all(v < kh for p in explicit for v in p):  # padding within the kernel, as every model's
            return depthwise_conv(lhs, rhs.reshape(kh, kw, out), tuple(window_strides), explicit)
    if explicit is not None and rhs.shape[:2] == (1, 1) and tuple(window_strides) == (1, 1) \
            and explicit == ((0, 0), (0, 0)):
        return grouped_pointwise_conv(lhs, rhs, feature_group_count)
    if explicit is not None and feature_group_count == 1 and rhs.shape[2] <= _STEM_INPUTS:
        return stem_conv(lhs, rhs, tuple(window_strides), explicit)
    if explicit is not None and feature_group_count == 1 and rhs.shape[0] == rhs.shape[1] > 1:
        return dense_conv(lhs, rhs, tuple(window_strides), explicit)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                                    precision=precision, preferred_element_type=preferred_element_type)


def conv_general_dilated(impl: str = "auto"):
    """The convolution function for flax.linen.Conv(conv_general_dilated=...) under `impl`."""
    return fast_conv_general_dilated if resolve_impl(impl) == "fast" else lax.conv_general_dilated
