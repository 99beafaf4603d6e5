"""DANet's channel attention (``dnlseg.context.channel_attention``): its arguments and its precision (the maths: the
block contract, the mmseg parity and the region-key tests)."""

import pytest
import torch

from dnlseg.context import ChannelAttention2d
from tests.helpers import backward_nodes


def test_in_channels_must_be_positive_and_one_channel_is_a_block():
    with pytest.raises(ValueError, match="in_channels=0 must be positive"):
        ChannelAttention2d(0)
    x = torch.randn(1, 1, 2, 3)
    torch.testing.assert_close(ChannelAttention2d(1)(x), x)  # gamma = 0: the identity


def test_an_input_of_other_channels_is_refused_naming_both_counts():
    with pytest.raises(ValueError, match="expected 4 input channels, got 3"):
        ChannelAttention2d(4)(torch.randn(1, 3, 2, 2))


def test_a_bfloat16_input_gets_its_energies_and_weights_in_float32():
    """The energies of a bf16 map sum P = 64 products each: rounded to bf16 (8 bits) their differences, and so the
    weights, are off by ~0.15 here; in float32 the result is the float64 one to ~1e-6 (the input is exact in both)."""
    torch.manual_seed(0)
    block = ChannelAttention2d(4)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    x = torch.randn(1, 4, 8, 8).bfloat16()
    expected = block.double()(x.double())
    out = block.float()(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)


def test_training_takes_the_gram_matrixs_symmetric_backward_and_inference_the_plain_product():
    block = ChannelAttention2d(4).train()
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    assert "GramBackward" in backward_nodes(block(x))  # one (G + G^T) x product in the backward
    assert "GramBackward" not in backward_nodes(block(x.detach().requires_grad_(False)) + x)
