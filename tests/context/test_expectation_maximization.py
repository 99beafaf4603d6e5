"""EMANet's EMA unit (context/expectation_maximization.py): the bases' moving average -- over the images and the
DDP processes, in place, in training only -- and no gradient through the attention."""

import copy

import torch
import torch.nn.functional as F

from dnlseg.context import ExpectationMaximizationAttention2d, capture_attention
from dnlseg.context import expectation_maximization as ema
from dnlseg.models.buffers import BufferSnapshot
from tests.helpers import TwoRanks


def final_bases(block, x):
    """Each image's bases after the EM iterations, (N, K, C), from an eval forward's captured values."""
    with capture_attention(block.eval()) as captured:
        block(x)
    block.train()
    return captured[""][0].values


def test_ddp_ranks_average_the_mean_bases_of_each_process_and_keep_the_same_buffer(monkeypatch):
    torch.manual_seed(0)
    ranks = TwoRanks()
    monkeypatch.setattr(ema, "all_reduce", ranks.all_reduce)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    block = ExpectationMaximizationAttention2d(8, num_bases=4, num_stages=2, momentum=0.3)
    copies = [copy.deepcopy(block).train() for _ in range(2)]
    x = torch.randn(4, 8, 5, 6)
    parts = [x[:3], x[3:]]  # 3 images on rank 0, 1 on rank 1: the mean of the ranks' means, not of the 4 images
    per_rank = [final_bases(copy.deepcopy(block), part).mean(0) for part in parts]  # (K, C) each
    average = F.normalize((per_rank[0] + per_rank[1]) / 2, dim=1).T[None]  # (1, C, K), l2 over the channels
    expected = 0.7 * block.bases + 0.3 * average
    ranks.run(lambda rank, part: copies[rank](part), parts)
    assert ranks.calls == [1, 1]
    for rank in copies:
        torch.testing.assert_close(rank.bases, expected)


def test_one_process_and_evaluation_take_no_collective_and_evaluation_keeps_the_bases(monkeypatch):
    calls = []
    monkeypatch.setattr(ema, "all_reduce", lambda t: calls.append(t) or t)
    block = ExpectationMaximizationAttention2d(8, num_bases=4)
    x = torch.randn(2, 8, 4, 4)
    before = block.bases.clone()
    block.eval()(x)
    assert torch.equal(block.bases, before)
    block.train()(x)  # one process: the update without a collective
    assert not torch.equal(block.bases, before) and calls == []
    torch.testing.assert_close(block.bases.norm(dim=1), torch.ones(1, 4), atol=0.2, rtol=0)


def test_the_bases_are_updated_in_place_so_a_buffer_snapshot_undoes_an_analysis_forward():
    """An analysis that runs an extra training forward (the separation probe) restores the buffers it moved."""
    block = ExpectationMaximizationAttention2d(8, num_bases=4).train()
    buffer, before = block.bases, block.bases.clone()
    snapshot = BufferSnapshot(block)
    block(torch.randn(2, 8, 4, 4))
    assert block.bases is buffer and not torch.equal(buffer, before)
    snapshot.restore()
    assert torch.equal(block.bases, before)


def test_no_gradient_reaches_the_attention_only_the_output_branch_and_the_residual():
    torch.manual_seed(1)
    block = ExpectationMaximizationAttention2d(8, num_bases=4).eval()
    x = torch.randn(1, 8, 4, 5, requires_grad=True)
    with capture_attention(block) as captured:
        out = block(x)
    record = captured[""][0]
    assert not record.output.requires_grad and not record.pairwise_query.requires_grad
    y = record.output.transpose(1, 2).reshape(1, 8, 4, 5)  # held fixed: what the unit's gradient sees
    (expected,) = torch.autograd.grad(F.relu(x + block.out(F.relu(y))).sum(), x)
    (got,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(got, expected)
    assert block.branches().keys() == {"out"} and not any(p.requires_grad for p in block.embed.parameters())
