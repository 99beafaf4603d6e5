"""OCR's object context (``dnlseg.context.object_context``): its arguments and inputs (the maths: the block contract,
the mmseg parity and the region-key tests)."""

import pytest
import torch

from dnlseg.context import ObjectContextAttention2d
from dnlseg.context.object_context import spatial_gather


def test_the_gather_weights_are_the_softmax_of_the_logits_over_the_pixels_unscaled_by_default():
    torch.manual_seed(0)
    x, logits = torch.randn(2, 4, 3, 5), torch.randn(2, 3, 3, 5)
    regions, weights = spatial_gather(x, logits)
    expected = torch.softmax(logits.flatten(2), dim=2)  # (N, K, P)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(regions[..., 0], x.flatten(2) @ expected.transpose(1, 2))  # (N, C, K)


def test_one_channel_without_reduction_is_a_block_of_one_attention_channel():
    block = ObjectContextAttention2d(1, reduction=1).eval()
    assert block.channels == 1
    assert block(torch.randn(1, 1, 2, 3), torch.randn(1, 2, 2, 3)).shape == (1, 1, 2, 3)


@pytest.mark.parametrize("logits_shape", [(1, 3, 4, 5), (2, 3, 5, 5), (2, 3, 4, 6)], ids=["batch", "height", "width"])
def test_coarse_logits_of_another_batch_or_size_are_refused_naming_both_shapes(logits_shape):
    block = ObjectContextAttention2d(8)
    shape = ", ".join(map(str, logits_shape))
    with pytest.raises(ValueError, match=rf"coarse logits \({shape}\) do not match the feature map \(2, 8, 4, 5\)"):
        block(torch.randn(2, 8, 4, 5), torch.randn(*logits_shape))
