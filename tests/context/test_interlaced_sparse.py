"""ISA's interlaced sparse attention (``dnlseg.context.interlaced_sparse``): its arguments and inputs (the maths: the
block contract, the mmseg parity, the key-set and the region-key tests)."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnlseg.context import GroupAttention2d, InterlacedSparseAttention2d, capture_attention


def test_a_tile_one_pixel_high_is_a_positive_size_and_runs():
    block = InterlacedSparseAttention2d(4, reduction=2, group_size=(1, 2)).eval()
    with torch.no_grad():
        assert block(torch.randn(1, 4, 3, 4)).shape == (1, 4, 3, 4)


@pytest.mark.parametrize("group_size", [(8,), (8, 8, 8), (0, 8), (8, 0), (-2, 2)])
def test_a_group_size_that_is_not_two_positive_sizes_is_refused(group_size):
    with pytest.raises(ValueError, match=rf"group_size=\({', '.join(map(str, group_size))},?\) must be two positive"):
        InterlacedSparseAttention2d(8, group_size=group_size)


def test_one_channel_and_a_yaml_list_of_tile_sizes_are_allowed():
    block = InterlacedSparseAttention2d(1, reduction=1, group_size=[2, 3]).eval()
    assert block.group_size == block.long_range.group_size == block.short_range.group_size == (2, 3)
    assert block(torch.randn(1, 1, 2, 3)).shape == (1, 1, 2, 3)


def test_both_stages_use_the_norm_layer_given():
    block = InterlacedSparseAttention2d(8, norm_layer=partial(nn.GroupNorm, 2))
    norms = [type(m) for m in block.modules() if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))]
    assert len(norms) == 2 * 5 and set(norms) == {nn.GroupNorm}  # per stage: 2 query, 2 key and 1 output norm


def test_the_padding_is_split_evenly_with_the_odd_pixel_after():
    """A 6 x 5 map in 4 x 4 tiles: 2 rows of padding, 1 above and 1 below; 3 columns, 1 left and 2 right."""
    torch.manual_seed(0)
    block = InterlacedSparseAttention2d(8, group_size=(4, 4)).eval()
    x = torch.randn(1, 8, 6, 5)
    with capture_attention(block) as captured:
        out = block(x)
    padded = F.pad(x, (1, 2, 1, 1))  # (left, right, top, bottom)
    expected = block.short_range(block.long_range(padded))[:, :, 1:7, 1:6]
    torch.testing.assert_close(out, expected)
    assert [captured[name][0].keys.image for name in ("long_range", "short_range")] == [(1, 1, 6, 5)] * 2


def test_a_stage_called_alone_has_the_image_on_its_whole_grid_and_its_keys_on_the_inputs_device():
    stage = GroupAttention2d(4, 2, "long", group_size=(2, 2)).eval()
    with capture_attention(stage) as captured:
        stage(torch.randn(1, 4, 4, 6))
    assert captured[""][0].keys.image == (0, 0, 4, 6)
    # a tensor of another device (meta here, CUDA in use) for the groups: no CPU tensor among the keys
    keys = stage.keys((4, 6), (0, 0, 4, 6), torch.device("meta"))
    assert keys.groups.device.type == keys.order.device.type == "meta"
    meta = stage.to("meta")
    with capture_attention(meta) as captured:
        meta(torch.empty(1, 4, 4, 6, device="meta"))
    assert captured[""][0].keys.groups.device.type == "meta"


def test_an_unknown_group_range_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="group_range='middle' is not one of 'long', 'short'"):
        GroupAttention2d(8, 4, "middle")


@pytest.mark.parametrize("size", [(4, 5), (5, 4)])
def test_a_stage_refuses_a_map_that_is_not_made_of_whole_tiles(size):
    stage = GroupAttention2d(8, 4, "short", group_size=(2, 2))
    with pytest.raises(ValueError, match=rf"a {size[0]} x {size[1]} map is not made of whole \(2, 2\) tiles"):
        stage(torch.randn(1, 8, *size))
