"""ANN's head (``dnlseg.models.heads.asymmetric_non_local``): its arguments and defaults (its maths: the mmseg parity
tests in tests/models/test_mmseg_heads.py)."""

import pytest

from dnlseg.models.heads import ANNHead


@pytest.mark.parametrize("channels, reduction", [(16, 0), (16, -2), (16, 3)])
def test_a_width_that_is_not_a_positive_multiple_of_the_reduction_is_refused(channels, reduction):
    with pytest.raises(ValueError, match=f"channels={channels} must be a positive multiple of reduction={reduction}"):
        ANNHead([3, 4, 8], 2, channels, reduction=reduction)


def test_the_defaults_are_mmsegs_annnet_config():
    head = ANNHead([3, 4, 8], 2)
    assert head.bottleneck.conv.out_channels == 512 and head.fusion.channels == head.context.channels == 256
    assert head.fusion.pool_scales == head.context.pool_scales == (1, 3, 6, 8) and head.dropout.p == 0.1
    assert head.inputs == ("previous", "last")


def test_the_options_reach_both_blocks():
    head = ANNHead([3, 4, 8], 2, 16, 0.3, reduction=1, pool_scales=(1, 2))
    assert (head.fusion.channels, head.context.channels) == (16, 16)
    assert head.fusion.pool_scales == head.context.pool_scales == (1, 2)
    assert head.fusion.query.conv.in_channels == 8 and head.fusion.value.in_channels == 4 and head.dropout.p == 0.3
