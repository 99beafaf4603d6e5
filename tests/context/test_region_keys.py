"""Blocks whose keys are not pixels (ANN's pyramid cells, OCR's class regions, CAM's channels) and ISA's padded
grid: what their captured key sets say the keys are and cover."""

import torch

from dnlseg.context import (
    AsymmetricPyramidNonLocal2d,
    ChannelAttention2d,
    InterlacedSparseAttention2d,
    ObjectContextAttention2d,
    capture_attention,
)
from dnlseg.context.layers import pyramid_cover
from dnlseg.context.object_context import spatial_gather


def test_a_region_of_a_class_peaked_on_one_pixel_is_that_pixels_feature():
    x = torch.randn(1, 4, 3, 5)
    logits = torch.zeros(1, 2, 3, 5)
    logits[0, 1, 2, 3] = 50.0  # class 1 sits on pixel (2, 3); class 0 is spread evenly
    regions, cover = spatial_gather(x, logits)
    torch.testing.assert_close(regions[0, :, 1, 0], x[0, :, 2, 3])
    torch.testing.assert_close(regions[0, :, 0, 0], x[0].mean((1, 2)))
    torch.testing.assert_close(cover.sum(-1), torch.ones(1, 2))


def test_ocr_keys_are_the_class_regions_covering_the_pixels_with_their_gather_weights():
    torch.manual_seed(0)
    block = ObjectContextAttention2d(8, scale=2.0).eval()
    x, logits = torch.randn(2, 8, 4, 5), torch.randn(2, 3, 4, 5)
    with capture_attention(block) as captured:
        block(x, logits)
    (record,) = captured[""]
    assert (record.keys.kind, record.keys.what, record.key_size) == ("tokens", "class regions", (3, 1))
    torch.testing.assert_close(record.keys.cover, torch.softmax(2.0 * logits.flatten(2), dim=-1))
    assert record.keys.cover_size == (4, 5) and record.pairwise_query.shape[1] == 20


def test_ann_keys_are_the_pyramid_cells_of_the_key_grid():
    block = AsymmetricPyramidNonLocal2d(8).eval()
    with capture_attention(block) as captured:
        block(torch.randn(1, 8, 9, 7))
    (record,) = captured[""]
    assert (record.keys.what, record.key_size, record.keys.cover_size) == ("pyramid cells", (110, 1), (9, 7))
    torch.testing.assert_close(record.keys.cover[0], pyramid_cover((9, 7), (1, 3, 6, 8)))
    assert "boundary_consistency" in block.undefined_analyses


def test_cam_rows_and_keys_are_channels_and_the_pixel_analyses_say_why_not():
    block = ChannelAttention2d(6)
    x = torch.randn(2, 6, 3, 4)
    with capture_attention(block) as captured:
        block(x)
    (record,) = captured[""]
    assert record.queries == "channels" and record.keys.cover is None and record.pairwise_query.shape == (2, 6, 12)
    assert (record.keys.kind, record.keys.what, record.query_size, record.key_size) == (
        "tokens",
        "channels",
        (6, 1),
        (6, 1),
    )
    logits = record.pairwise_logits() + record.unary_logits  # softmax_b(-x_a . x_b) up to a constant per row
    channels = x.flatten(2)
    torch.testing.assert_close(
        torch.softmax(logits, -1), torch.softmax(-channels @ channels.transpose(1, 2), -1), rtol=1e-5, atol=1e-6
    )
    assert {"attention_maps", "category_consistency", "boundary_consistency"} == block.undefined_analyses.keys()


def test_isa_records_where_the_image_lies_on_its_padded_grid():
    block = InterlacedSparseAttention2d(8, group_size=(4, 4)).eval()
    with capture_attention(block) as captured:
        block(torch.randn(1, 8, 9, 6))  # padded to 12 x 8: 3 rows (1 above), 2 columns (1 left)
    for name in ("long_range", "short_range"):
        (record,) = captured[name]
        assert record.query_size == (12, 8) and record.keys.image == (1, 1, 9, 6)
