"""CCNet's criss-cross attention (``dnlseg.context.criss_cross``): its arguments (the maths: the block contract, the
mmcv parity and the key-set tests)."""

import pytest
import torch

from dnlseg.context import CrissCrossAttention2d


@pytest.mark.parametrize(
    ("in_channels", "reduction"),
    [(0, 8), (16, 0), (16, -8), (12, 8)],
    ids=["no_channels", "zero_reduction", "negative_reduction", "not_a_multiple"],
)
def test_channels_that_are_not_a_positive_multiple_of_the_reduction_are_refused(in_channels, reduction):
    with pytest.raises(ValueError, match=f"in_channels={in_channels} must be a positive multiple of reduction="):
        CrissCrossAttention2d(in_channels, reduction)


def test_one_channel_without_reduction_is_a_block_of_one_query_channel():
    block = CrissCrossAttention2d(1, reduction=1)
    assert block.query.out_channels == block.key.out_channels == 1 and block.value.out_channels == 1
    assert block(torch.randn(1, 1, 2, 3)).shape == (1, 1, 2, 3)


def test_a_recurrence_under_one_is_refused():
    with pytest.raises(ValueError, match="recurrence=0 must be at least 1"):
        CrissCrossAttention2d(16, recurrence=0)


def test_an_unknown_attention_path_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="attention='sparse' is not one of 'fused', 'materialized'"):
        CrissCrossAttention2d(16, attention="sparse")
