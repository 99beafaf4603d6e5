"""The layers the attention blocks share (context/layers.py)."""

import pytest
import torch
from torch import nn

from dnlseg.context.attention import tokens
from dnlseg.context.layers import ConvNormAct, pointwise_conv, pyramid_cover, pyramid_pool


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


def test_a_traced_pointwise_conv_is_the_convolution_for_any_batch():
    """The per-image loop would freeze the traced batch size: a trace records the conv itself."""
    torch.manual_seed(1)
    layer = ConvNormAct(6, 4, nn.BatchNorm2d).eval()
    traced = torch.jit.trace(layer, torch.randn(2, 6, 5, 5))
    x = torch.randn(3, 6, 4, 7)
    torch.testing.assert_close(traced(x), layer(x))
    assert "conv" in str(traced.graph).lower() and "addmm" not in str(traced.graph)
