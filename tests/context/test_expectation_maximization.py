"""EMANet's EMA unit (context/expectation_maximization.py): the bases' moving average -- over the images and the
DDP processes, in place, in training only -- and no gradient through the attention."""

import copy

import pytest
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


def test_mean_over_processes_averages_the_ranks_tensors(monkeypatch):
    ranks = TwoRanks()
    monkeypatch.setattr(ema, "all_reduce", ranks.all_reduce)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    parts = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 10.0])]
    means = ranks.run(lambda rank, part: ema.mean_over_processes(part), parts)
    for mean in means:
        torch.testing.assert_close(mean, torch.tensor([2.0, 6.0]))


def test_all_reduce_sums_into_a_new_tensor_and_leaves_its_input(tmp_path):
    """A real one-process gloo group: the sum over one process is the tensor itself, returned as a copy."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        tensor = torch.tensor([1.0, -2.0])
        total = ema.all_reduce(tensor)
    finally:
        torch.distributed.destroy_process_group()
    torch.testing.assert_close(total, torch.tensor([1.0, -2.0]))
    assert total is not tensor


def test_the_keys_are_the_bases_covering_the_pixels_with_their_l1_normalised_responsibilities():
    torch.manual_seed(2)
    block = ExpectationMaximizationAttention2d(8, num_bases=3, num_stages=1).eval()  # one E-step: from the buffer
    x = torch.randn(2, 8, 4, 5)
    with capture_attention(block) as captured:
        block(x)
    (record,) = captured[""]
    assert (record.keys.kind, record.keys.what, record.key_size, record.keys.cover_size) == (
        "tokens",
        "bases",
        (3, 1),
        (4, 5),
    )
    feats = block.embed(x).flatten(2)  # (N, C, P)
    z = torch.softmax(block.bases.transpose(1, 2) @ feats, dim=1)  # (N, K, P): each pixel over the bases
    torch.testing.assert_close(record.keys.cover, z / z.sum(dim=2, keepdim=True))  # each base's sum over the pixels: 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(in_channels=0), "in_channels=0"),
        (dict(num_bases=0), "num_bases=0"),
        (dict(num_stages=0), "num_stages=0"),
        (dict(momentum=-0.1), r"momentum=-0.1 must lie in \[0, 1\]"),
        (dict(momentum=1.5), r"momentum=1.5 must lie in \[0, 1\]"),
    ],
)
def test_arguments_out_of_range_are_refused_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExpectationMaximizationAttention2d(**{"in_channels": 8, **kwargs})


def test_the_smallest_unit_and_the_momentum_bounds_are_allowed():
    """One channel, one base, one stage; momentum 0 keeps the bases, 1 replaces them with the images' mean."""
    torch.manual_seed(3)
    assert ExpectationMaximizationAttention2d(1, num_bases=1, num_stages=1)(torch.randn(1, 1, 2, 2)).shape == (
        1,
        1,
        2,
        2,
    )
    x = torch.randn(2, 8, 3, 3)
    kept = ExpectationMaximizationAttention2d(8, num_bases=2, momentum=0.0).train()
    before = kept.bases.clone()
    kept(x)
    torch.testing.assert_close(kept.bases, before)
    replaced = ExpectationMaximizationAttention2d(8, num_bases=2, momentum=1.0)
    expected = F.normalize(final_bases(copy.deepcopy(replaced), x).mean(0), dim=1).T[None]  # (1, C, K)
    replaced.train()(x)
    torch.testing.assert_close(replaced.bases, expected)
