"""The layers the attention blocks share (context/layers.py)."""

import pytest
import torch

from dnlseg.context.attention import tokens
from dnlseg.context.layers import pyramid_cover, pyramid_pool


@pytest.mark.parametrize("size", [(13, 11), (8, 8), (2, 3)])
def test_the_pyramid_cover_averages_the_pixels_each_pooled_cell_averages(size):
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    cover = pyramid_cover(size, (1, 3, 6, 8), dtype=torch.float64)  # (110, P)
    assert cover.shape == (110, size[0] * size[1])
    torch.testing.assert_close(cover.sum(-1), torch.ones(110, dtype=torch.float64))
    torch.testing.assert_close(cover @ tokens(x), pyramid_pool(x, (1, 3, 6, 8)).transpose(1, 2))
