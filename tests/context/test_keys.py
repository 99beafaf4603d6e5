"""Key sets (context/keys.py): which keys each query attends to, the restricted ``combine``, and the kernels that
attend over them without the (P, Pk) map."""

import pytest
import torch

from dnlseg.context import CrissCrossAttention2d, GroupAttention2d, capture_attention
from dnlseg.context.keys import CrissCrossKeys, GridKeys, criss_cross_attention, grouped_attention, reorder


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


def test_reordering_tokens_passes_the_gradient_back_through_the_inverse_permutation():
    torch.manual_seed(3)
    order = torch.randperm(7)
    inverse = torch.argsort(order)
    t = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    assert torch.equal(reorder(t, order, inverse), t[:, order])
    torch.autograd.gradcheck(lambda t: reorder(t, order, inverse), (t,))
    with torch.no_grad():
        assert torch.equal(reorder(t, order, inverse), t[:, order])


def test_training_reorders_through_the_inverse_gather_and_a_trace_records_plain_indexing():
    """The gather backward where a gradient flows; a traced graph gets the index itself (no Python op in it)."""
    order = torch.randperm(6)
    inverse = torch.argsort(order)
    t = torch.randn(1, 6, 2, requires_grad=True)
    assert type(reorder(t, order, inverse).grad_fn).__name__ == "ReorderBackward"
    traced = torch.jit.trace(lambda t: reorder(t, order, inverse), (t,))
    assert "prim::PythonOp" not in {node.kind() for node in traced.graph.nodes()}, traced.graph
    torch.testing.assert_close(traced(t), t[:, order])


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


def recorded(pairwise, unary, rows=None):
    """A ``combine`` that hands back what it was given."""
    return pairwise, unary, rows


def test_the_restricted_combine_puts_minus_infinity_outside_each_querys_keys_and_passes_the_rows():
    keys = CrissCrossKeys((2, 3))
    restricted = keys.restrict(recorded)
    rows = torch.tensor([[0, 5]])  # queries (0, 0) and (1, 2)
    outside = torch.zeros(1, 2, 6, dtype=torch.float64).masked_fill(~keys.mask(rows), float("-inf"))
    p, u = torch.randn(1, 2, 6, dtype=torch.float64), torch.randn(1, 1, 6, dtype=torch.float64)
    got_p, got_u, got_rows = restricted(p, u, rows)
    assert torch.equal(got_p, p + outside) and got_u is u and got_rows is rows and got_p.dtype == torch.float64
    # a unary term alone gets the restriction in its place: one row of unary logits per query
    got_p, got_u, got_rows = restricted(None, u.expand(1, 2, 6), rows)
    assert got_p is None and torch.equal(got_u, u + outside) and got_rows is rows
    # no rows: every query of the grid, in order
    got_p, _, got_rows = restricted(p.new_zeros(2, 6, 6), None)
    assert torch.equal(got_rows, torch.arange(6).expand(2, 6))
    assert torch.equal(got_p, torch.zeros(2, 6, 6, dtype=torch.float64).masked_fill(~keys.mask(None), float("-inf")))


def test_the_restricted_combine_keeps_a_bfloat16_logits_dtype():
    p = torch.randn(1, 6, 6).bfloat16()
    got_p, _, _ = CrissCrossKeys((2, 3)).restrict(recorded)(p, None)
    assert got_p.dtype == torch.bfloat16


def test_the_restricted_combine_refuses_no_logits_and_rows_it_cannot_place():
    restricted = CrissCrossKeys((3, 4)).restrict(recorded)
    with pytest.raises(ValueError, match="^no pairwise and no unary logits: nothing to restrict to each query's keys$"):
        restricted(None, None)
    message = r"^2 query rows of a \(3, 4\) grid: pass the rows they are for \(combine\(p, u, rows\)\), each query"
    with pytest.raises(ValueError, match=message + " attends to its own keys$"):
        restricted(torch.zeros(1, 2, 12), None)


def test_a_group_key_mask_of_every_query_has_one_row_per_position():
    keys = GroupAttention2d(4, 2, "short", (2, 2)).keys((2, 4), (0, 0, 2, 4), torch.device("cpu"))
    mask = keys.mask(None)  # (1, P, P)
    assert mask.shape == (1, 8, 8) and torch.equal(mask[0], keys.groups[:, None] == keys.groups[None, :])


def test_the_kernels_and_masks_work_on_the_tensors_device():
    """meta stands in for CUDA: a tensor made on the CPU beside them fails or shows on the output's device."""
    meta = torch.device("meta")
    q, v = torch.empty(1, 6, 2, device=meta), torch.empty(1, 6, 3, device=meta)
    assert criss_cross_attention(q, q, v, (2, 3)).device == meta
    keys = CrissCrossKeys((2, 3))
    rows = torch.tensor([[0, 4]], device=meta)
    assert keys.mask(rows).device == meta and keys.all_rows(2, meta).device == meta
    p = torch.empty(2, 6, 6, device=meta)
    got_p, _, got_rows = keys.restrict(recorded)(p, None)
    assert got_p.device == got_rows.device == meta


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_the_criss_cross_kernel_runs_in_the_dtype_of_its_inputs(dtype):
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 6, 2), torch.randn(1, 6, 2), torch.randn(1, 6, 3)
    expected = criss_cross_attention(q, k, v, (2, 3))
    got = criss_cross_attention(q.to(dtype), k.to(dtype), v.to(dtype), (2, 3))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, rtol=0.05, atol=0.05)
