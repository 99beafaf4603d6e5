"""NonLocalBase, the base of the non-local blocks: argument checks, the initial state and the identity-at-init rule."""

import pytest
import torch
from torch import nn

from dnlseg.context import DisentangledNonLocal2d, NonLocal2d, NonLocalBase


@pytest.mark.parametrize("in_channels, reduction", [(0, 1), (8, 0), (-2, 1), (8, -1)])
def test_channels_and_reduction_must_be_positive(in_channels, reduction):
    with pytest.raises(ValueError, match=f"in_channels={in_channels} and reduction={reduction} must be positive"):
        NonLocalBase(in_channels, reduction)


def test_the_smallest_block_is_allowed_and_starts_fused():
    block = NonLocalBase(1, 1)
    assert (block.in_channels, block.channels, block.attention, block.downsample) == (1, 1, "fused", False)
    assert block.materialize is False
    assert NonLocalBase(8).channels == 4  # the default reduction is 2
    materialized = NonLocalBase(4, 2, attention="materialized")
    assert materialized.attention == "materialized" and materialized.materialize is True


def test_a_norm_without_a_bias_is_zero_initialised_through_its_weight():
    class ScaleOnly(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels, 1, 1))

        def forward(self, x):
            return x * self.weight

    block = NonLocal2d(4, norm_layer=ScaleOnly)
    assert torch.equal(block.out_norm.weight, torch.zeros(4, 1, 1))
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(block(x), x)  # the identity at init


def test_blocks_pass_their_arguments_to_the_base():
    for cls in (NonLocal2d, DisentangledNonLocal2d):
        block = cls(8, reduction=4, attention="materialized", downsample=True, norm_layer=None)
        assert (block.channels, block.attention, block.downsample) == (2, "materialized", True)
        assert isinstance(block.out_norm, nn.Identity) and torch.equal(
            block.out.weight, torch.zeros_like(block.out.weight)
        )


def test_a_norm_without_an_affine_weight_is_refused():
    with pytest.raises(ValueError, match="norm_layer .* has no affine weight to zero-initialise"):
        NonLocal2d(4, norm_layer=lambda c: nn.BatchNorm2d(c, affine=False))
