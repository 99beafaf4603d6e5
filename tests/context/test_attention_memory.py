"""The fused paths of the new blocks never hold a (P, P) map: PAM's row-blocked kernel (Cv != Cq), CCNet's
criss-cross (O(P (H + W))); the materialised paths do (so the tests can see a map)."""

import pytest
import torch

from dnlseg.context import CrissCrossAttention2d, PositionAttention2d
from dnlseg.context import attention as attention_module
from tests.helpers import TensorSizes


def largest_tensors(block, x) -> tuple[int, int]:
    """(largest tensor a forward op returned, largest tensor saved for backward), in elements."""
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with TensorSizes() as sizes, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x).sum().backward()
    return max(sizes), max(saved)


@pytest.mark.parametrize("attention", ["fused", "materialized"])
def test_criss_cross_never_builds_more_than_the_row_and_column_logits(attention):
    torch.manual_seed(0)
    H, W = 24, 20
    P = H * W
    block = CrissCrossAttention2d(16, recurrence=2, attention=attention)
    largest, kept = largest_tensors(block, torch.randn(1, 16, H, W, requires_grad=True))
    if attention == "fused":
        assert largest <= P * (H + W) and kept <= P * (H + W)
    else:
        assert largest >= P * P


def test_position_attention_fused_keeps_o_p_for_backward_and_blocks_of_rows(monkeypatch):
    torch.manual_seed(1)
    P = 16 * 12
    monkeypatch.setattr(attention_module, "BLOCK_ELEMENTS", 32 * P)  # blocks of 32 query rows
    fused = PositionAttention2d(16, attention="fused")
    largest, kept = largest_tensors(fused, torch.randn(1, 16, 16, 12, requires_grad=True))
    assert largest <= 32 * P and kept <= 16 * P  # the (P, C) tokens at most
    _, kept_materialized = largest_tensors(
        PositionAttention2d(16, attention="materialized"), torch.randn(1, 16, 16, 12, requires_grad=True)
    )
    assert kept_materialized >= P * P
