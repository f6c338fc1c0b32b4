"""MindSpore engine: the depthwise convolution with the faster gradient (mobilenets_ms/layers.py)
equals nn.Conv2d in values and gradients, layer by layer and through a whole network."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from configs.base import get_config
from mobilenets_core import specs
from mobilenets_ms import layers, models


def _value_and_grads(net, x, g):
    """net(x), d(sum(net(x) * g))/dx and the gradients of net's trainable parameters."""
    def loss(inputs):
        return (net(inputs) * g).sum()

    _, (dx, dparams) = ms.value_and_grad(loss, grad_position=0, weights=net.trainable_params())(x)
    return [net(x).asnumpy(), dx.asnumpy()] + [d.asnumpy() for d in dparams]


@pytest.fixture(params=["pynative", "graph"])
def mode(request):
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE)
    yield request.param
    ms.set_context(mode=previous)


@pytest.mark.parametrize("channels,kernel,stride,size", [(8, 3, 1, 9), (6, 5, 1, 8), (4, 3, 2, 8), (4, 5, 2, 9)])
def test_depthwise_values_and_gradients_equal_nn_conv2d(mode, channels, kernel, stride, size):
    rng = np.random.default_rng(kernel * 10 + stride)
    weight = rng.standard_normal((channels, 1, kernel, kernel)).astype(np.float32)
    fast = layers.DepthwiseConv2d(channels, kernel, stride, ms.Tensor(weight))
    reference = nn.Conv2d(channels, channels, kernel, stride, pad_mode="pad", padding=kernel // 2, group=channels,
                          has_bias=False, weight_init=ms.Tensor(weight))
    assert fast.fast == (stride == 1)  # the stride-2 gradient stays MindSpore's own
    fast.set_train(True)
    reference.set_train(True)
    x = ms.Tensor(rng.standard_normal((3, channels, size, size)).astype(np.float32))
    g = ms.Tensor(rng.standard_normal(reference(x).shape).astype(np.float32))
    got, want = _value_and_grads(fast, x, g), _value_and_grads(reference, x, g)
    assert [a.shape for a in got] == [a.shape for a in want] == [
        (3, channels, (size - 1) // stride + 1, (size - 1) // stride + 1), x.shape, weight.shape]
    for name, a, b in zip(("output", "input gradient", "kernel gradient"), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), err_msg=name)


def _config(name, groups, impl, variant=None):
    config = get_config()
    config.model.name, config.model.groups, config.model.variant = name, groups, variant
    config.model.width = (specs.MOBILENET_V4_WIDTHS[variant] if variant else specs.SUPPORTED_WIDTHS[name])[0]
    config.model.num_classes = 10
    config.model.dropout = 0.0
    config.model.conv_impl = impl
    return config


@pytest.mark.parametrize("name,groups,variant", [
    ("mobilenet_v3_small", None, None), ("shufflenet_v1", 3, None),
    pytest.param("mobilenet_v2", None, None, marks=pytest.mark.slow),
    pytest.param("mobilenet_v4", None, "conv_small", marks=pytest.mark.slow)])
def test_whole_network_gradients_equal_the_reference_path(name, groups, variant):
    """Training mode (batch statistics), graph mode: the loss and every parameter's gradient."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        x = ms.Tensor(np.random.default_rng(5).random((4, 32, 32, 3), dtype=np.float32))
        results = {}
        for impl in ("xla", "fast"):
            net = models.build_network(_config(name, groups, impl, variant).model, seed=7)
            cells = [c for _, c in net.cells_and_names() if isinstance(c, layers.DepthwiseConv2d)]
            fast_cells = sum(c.fast for c in cells)
            assert fast_cells == (0 if impl == "xla" else sum(c.applies for c in cells)) and sum(c.applies for c in cells)
            net.set_train(True)
            g = ms.Tensor(np.random.default_rng(6).standard_normal((4, 10)).astype(np.float32))
            results[impl] = _value_and_grads(net, x, g)
        fast, xla = results["fast"], results["xla"]
        assert len(fast) == len(xla) == 2 + len(net.trainable_params())
        # Outputs and the image gradient each, the parameter gradients as one set (as the JAX
        # engine's whole-network check): summation order differs, and BatchNorm over a few
        # values per channel magnifies float32 rounding in the small gradients of early layers.
        for label, a, b in (("logits", fast[0], xla[0]), ("image gradient", fast[1], xla[1])):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max(), err_msg=label)
        scale = max(np.abs(b).max() for b in xla[2:])
        worst = max(np.abs(a - b).max() for a, b in zip(fast[2:], xla[2:]))
        assert worst <= 1e-5 * scale, (worst, scale)
    finally:
        ms.set_context(mode=previous)


def test_every_stride_one_depthwise_conv_is_fast_on_cpu_by_default():
    net = models.build_network(_config("mobilenet_v1", None, "auto").model)
    cells = {n: c for n, c in net.cells_and_names() if isinstance(c, layers.DepthwiseConv2d)}
    assert len(cells) == 13  # MobileNetV1's depthwise layers: 9 of stride 1, 4 of stride 2
    assert sorted(n for n, c in cells.items() if not c.fast) == [
        "blocks.1.dw.conv", "blocks.11.dw.conv", "blocks.3.dw.conv", "blocks.5.dw.conv"]
    assert layers.use_impl(net, "xla") == "xla" and not any(c.fast for c in cells.values())
    assert layers.resolve_impl("auto", "Ascend") == "xla" and layers.resolve_impl("auto", "CPU") == "fast"


def test_unknown_conv_impl_is_named():
    with pytest.raises(ValueError, match=r"model.conv_impl='cudnn' is not one of auto, fast, xla"):
        models.build_network(_config("mobilenet_v3_small", None, "cudnn").model)
