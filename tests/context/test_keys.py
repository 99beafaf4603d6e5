"""Key sets (context/keys.py): which keys each query attends to, the restricted ``combine``, and the kernels that
attend over them without the (P, Pk) map."""

import pytest
import torch

from dnlseg.context import CrissCrossAttention2d, GroupAttention2d, capture_attention
from dnlseg.context.keys import CrissCrossKeys, GridKeys, criss_cross_attention, grouped_attention


def test_a_criss_cross_query_has_its_row_and_its_column_with_itself_once():
    keys = CrissCrossKeys((3, 4))
    mask = keys.mask(torch.tensor([[5]]))[0, 0].view(3, 4)  # query (1, 1)
    expected = torch.zeros(3, 4, dtype=torch.bool)
    expected[1, :] = True
    expected[:, 1] = True
    assert torch.equal(mask, expected) and mask.sum() == 3 + 4 - 1
    assert keys.mask(None).shape == (1, 12, 12) and GridKeys((3, 4)).mask(None) is None


def test_criss_cross_kernel_equals_the_softmax_over_row_and_column():
    torch.manual_seed(0)
    H, W = 4, 5
    q, k, v = torch.randn(2, H * W, 3), torch.randn(2, H * W, 3), torch.randn(2, H * W, 6)
    mask = CrissCrossKeys((H, W)).mask(None)  # (1, P, P)
    weights = torch.softmax((q @ k.transpose(1, 2)).masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(criss_cross_attention(q, k, v, (H, W)), weights @ v)


def test_grouped_kernel_equals_the_softmax_within_each_group():
    torch.manual_seed(1)
    order = torch.tensor([0, 3, 5, 1, 2, 4])  # groups {0, 3, 5} and {1, 2, 4}
    groups = torch.tensor([0, 1, 1, 0, 1, 0])
    q, k, v = torch.randn(2, 6, 3), torch.randn(2, 6, 3), torch.randn(2, 6, 4)
    logits = (q @ k.transpose(1, 2)).masked_fill(groups[:, None] != groups[None, :], float("-inf"))
    torch.testing.assert_close(grouped_attention(q, k, v, order, 3), torch.softmax(logits, dim=-1) @ v)


@pytest.mark.parametrize("group_range, members", [("long", 2 * 3), ("short", 2 * 2)])
def test_isa_groups_are_the_same_offset_in_every_tile_or_one_tile(group_range, members):
    stage = GroupAttention2d(4, 2, group_range, (2, 2))
    keys = stage.keys((4, 6), (0, 0, 4, 6), torch.device("cpu"))  # 2 x 3 tiles of 2 x 2
    mask = keys.mask(torch.tensor([[0]]))[0, 0].view(4, 6)  # the keys of query (0, 0)
    assert mask.sum() == members
    if group_range == "long":  # (0, 0) of every tile
        assert mask[::2, ::2].all() and mask.sum() == mask[::2, ::2].numel()
    else:  # the first tile
        assert mask[:2, :2].all()


def test_the_restricted_combine_needs_the_rows_of_a_subset_of_queries():
    torch.manual_seed(2)
    block = CrissCrossAttention2d(8, recurrence=1)
    with capture_attention(block) as captured:
        block(torch.randn(1, 8, 3, 4))
    (record,) = captured[""]
    rows = torch.tensor([[0, 6]])
    weights = record.weights(rows)  # (1, 2, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2))
    assert torch.equal(weights[0] > 0, record.key_mask(rows)[0])  # weight on the query's cross only
    with pytest.raises(ValueError, match="pass the rows they are for"):
        record.combine(record.pairwise_logits(rows), record.unary_logits)
    everything = record.combine(record.pairwise_logits(), record.unary_logits)  # no rows: all of them, in order
    torch.testing.assert_close(everything[:, rows[0]], weights)
