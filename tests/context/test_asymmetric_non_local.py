"""ANN's asymmetric non-local blocks (``dnlseg.context.asymmetric_non_local``): their arguments (the maths: the block
contract, the mmseg parity and the region-key tests)."""

import pytest
import torch

from dnlseg.context import AsymmetricFusionNonLocal2d, AsymmetricPyramidNonLocal2d, capture_attention


@pytest.mark.parametrize(
    ("in_channels", "reduction"),
    [(8, 0), (8, -2), (9, 2)],
    ids=["zero_reduction", "negative_reduction", "not_a_multiple"],
)
def test_apnb_channels_that_are_not_a_positive_multiple_of_the_reduction_are_refused(in_channels, reduction):
    with pytest.raises(ValueError, match=f"in_channels={in_channels} must be a positive multiple of reduction="):
        AsymmetricPyramidNonLocal2d(in_channels, reduction)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(low_channels=0),
        dict(high_channels=0),
        dict(high_channels=0, out_channels=4),
        dict(channels=0),
        dict(out_channels=-1),
        dict(pool_scales=()),
    ],
)
def test_afnb_channel_counts_must_be_positive_and_the_pyramid_non_empty(kwargs):
    with pytest.raises(ValueError, match="^channel counts must be positive and pool_scales non-empty$"):
        AsymmetricFusionNonLocal2d(**{"low_channels": 4, "high_channels": 6, "channels": 2, **kwargs})


def test_one_channel_blocks_of_one_cell_are_allowed():
    apnb = AsymmetricPyramidNonLocal2d(1, reduction=1, pool_scales=(1,)).eval()
    assert apnb(torch.randn(1, 1, 2, 3)).shape == (1, 1, 2, 3)
    afnb = AsymmetricFusionNonLocal2d(1, 1, channels=1, pool_scales=(1,)).eval()
    assert afnb(torch.randn(1, 1, 3, 3), torch.randn(1, 1, 2, 3)).shape == (1, 1, 2, 3)


def test_afnb_attends_at_256_channels_by_default_and_keeps_the_high_level_width():
    block = AsymmetricFusionNonLocal2d(4, 6)
    assert block.channels == block.query.conv.out_channels == 256 and block.bottleneck.conv.out_channels == 6


def test_the_output_conv_starts_at_zero_weight_and_bias():
    for block in (AsymmetricPyramidNonLocal2d(8), AsymmetricFusionNonLocal2d(4, 6, channels=2)):
        assert not block.out.weight.any() and block.out.bias is not None and not block.out.bias.any()


@pytest.mark.parametrize("device, dtype", [("cpu", torch.float64), ("meta", torch.float32)])
def test_the_captured_pyramid_cover_has_the_dtype_and_device_of_the_queries(device, dtype):
    block = AsymmetricPyramidNonLocal2d(8, pool_scales=(1, 2)).eval().to(device, dtype)
    with capture_attention(block) as captured:
        block(torch.randn(1, 8, 4, 5, dtype=dtype).to(device))
    cover = captured[""][0].keys.cover
    assert (cover.device.type, cover.dtype, cover.shape) == (device, dtype, (1, 5, 20))
