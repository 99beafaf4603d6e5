"""The layers the attention blocks share (context/layers.py)."""

import pytest
import torch
from torch import nn

from dnlseg.context.attention import tokens
from dnlseg.context.layers import ConvNormAct, pointwise_conv, pyramid_cover, pyramid_pool
from tests.helpers import backward_nodes


@pytest.mark.parametrize("size", [(13, 11), (8, 8), (2, 3)])
def test_the_pyramid_cover_averages_the_pixels_each_pooled_cell_averages(size):
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    cover = pyramid_cover(size, (1, 3, 6, 8), dtype=torch.float64)  # (110, P)
    assert cover.shape == (110, size[0] * size[1])
    torch.testing.assert_close(cover.sum(-1), torch.ones(110, dtype=torch.float64))
    torch.testing.assert_close(cover @ tokens(x), pyramid_pool(x, (1, 3, 6, 8)).transpose(1, 2))


def layouts(x):
    """x in the layouts a block hands a 1x1 conv: contiguous, channels last (transposed tokens), neither."""
    return {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "strided": x[..., ::2],
    }


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_the_pointwise_products_give_the_convolutions_output_and_gradients(layout, batch, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1, bias=bias).double()
    x = layouts(torch.randn(batch, 6, 5, 8, dtype=torch.float64))[layout].requires_grad_()
    y = pointwise_conv(x, conv)
    assert y.shape == (batch, 4, 5, x.shape[-1])
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, *conv.parameters()])
    expected_y = conv(x)
    expected = torch.autograd.grad((expected_y * weights).sum(), [x, *conv.parameters()])
    torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "options", [{"kernel_size": 3}, {"kernel_size": 1, "stride": 2}, {"kernel_size": 1, "padding": 1}, {"groups": 2}]
)
def test_any_other_convolution_runs_as_itself(options):
    torch.manual_seed(3)
    conv = nn.Conv2d(6, 4, **({"kernel_size": 1} | options)).double()
    x = torch.randn(2, 6, 5, 8, dtype=torch.float64)
    assert torch.equal(pointwise_conv(x, conv), conv(x))


def test_a_traced_pointwise_conv_is_the_convolution_for_any_batch():
    """The per-image loop would freeze the traced batch size: a trace records the conv itself."""
    torch.manual_seed(1)
    layer = ConvNormAct(6, 4, nn.BatchNorm2d).eval()
    traced = torch.jit.trace(layer, torch.randn(2, 6, 5, 5))
    x = torch.randn(3, 6, 4, 7)
    torch.testing.assert_close(traced(x), layer(x))
    assert "conv" in str(traced.graph).lower() and "addmm" not in str(traced.graph)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_1x1_conv_norm_act_on_cpu_runs_matrix_products_not_onednns_convolution(layout):
    layer = ConvNormAct(6, 4, nn.BatchNorm2d)
    x = layouts(torch.randn(2, 6, 5, 8))[layout].requires_grad_()
    nodes = backward_nodes(layer(x))
    assert "ConvolutionBackward0" not in nodes and {"AddmmBackward0", "MmBackward0"} & nodes, nodes
    assert "ConvolutionBackward0" in backward_nodes(pointwise_conv(layouts(x)["strided"], layer.conv))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_a_k_by_k_conv_norm_act_keeps_the_size_and_is_conv_norm_relu(kernel_size):
    torch.manual_seed(2)
    layer = ConvNormAct(6, 4, nn.BatchNorm2d, kernel_size=kernel_size).double()
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    expected = torch.relu(layer.bn(nn.functional.conv2d(x, layer.conv.weight, padding=kernel_size // 2)))
    torch.testing.assert_close(layer(x), expected)
    assert layer.conv.bias is None  # under a norm


@pytest.mark.parametrize("size", [(13, 11), (8, 8), (2, 3)])
def test_the_exported_pyramid_pool_is_the_product_with_the_cover_and_the_same_averages(size, monkeypatch):
    """ONNX has no adaptive pooling: under torch.export the pool is x @ cover^T, equal to it at any size."""
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    pooled = pyramid_pool(x, (1, 3, 6, 8))
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    exported = pyramid_pool(x, (1, 3, 6, 8))
    assert exported.shape == pooled.shape == (2, 5, 110) and exported.dtype == torch.float64
    torch.testing.assert_close(exported, pooled)
