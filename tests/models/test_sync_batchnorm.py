"""The CPU-capable SyncBatchNorm keeps BatchNorm's state; its all-reduce path, with two ranks simulated in one
process, computes what BatchNorm computes on the global batch (values, running statistics, gradients)."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dnlseg.models import sync_batchnorm
from dnlseg.models.sync_batchnorm import SyncBatchNorm, SyncBatchNormPlugin
from tests.helpers import TwoRanks


def test_plugin_converts_every_batchnorm_and_reverts_keeping_the_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    model(torch.randn(2, 3, 8, 8))  # running statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plugin = SyncBatchNormPlugin()
    converted = plugin.apply(model)
    assert [type(m) for m in converted if "Norm" in type(m).__name__] == [SyncBatchNorm, SyncBatchNorm]
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in converted.modules())  # DDP refuses those on CPU
    assert all(torch.equal(before[k], v) for k, v in converted.state_dict().items())
    reverted = plugin.revert(converted)
    assert not any(isinstance(m, SyncBatchNorm) for m in reverted.modules())
    assert all(torch.equal(before[k], v) for k, v in reverted.state_dict().items())


def test_single_process_forward_equals_batchnorm():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(4)
    sync = SyncBatchNormPlugin().apply(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(sync(x), reference(x))
    torch.testing.assert_close(sync.running_var, reference.running_var)


@pytest.fixture
def two_ranks(monkeypatch):
    ranks = TwoRanks()
    monkeypatch.setattr(sync_batchnorm, "all_reduce", ranks.all_reduce)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    return ranks


def test_cpu_all_reduce_path_normalises_over_the_global_batch_like_batchnorm_on_it(two_ranks):
    # Rank 0 holds 3 images, rank 1 holds 1 (unequal counts: n must be summed, not assumed equal).
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(4, momentum=0.3)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    syncs = [SyncBatchNormPlugin().apply(nn.Sequential(copy.deepcopy(reference)))[0] for _ in range(2)]
    x = torch.randn(4, 4, 3, 5) * 2 + 1
    parts = [x[:3].clone().requires_grad_(), x[3:].clone().requires_grad_()]
    target = torch.randn(4, 4, 3, 5)

    outputs = two_ranks.run(lambda rank, part: syncs[rank](part), parts)
    assert two_ranks.calls == [2, 2]  # sum and count, then the squared deviations
    full = x.clone().requires_grad_()
    expected = reference(full)
    torch.testing.assert_close(torch.cat(outputs), expected)
    for sync in syncs:  # every rank keeps the global running statistics, unbiased variance as BatchNorm does
        torch.testing.assert_close(sync.running_mean, reference.running_mean)
        torch.testing.assert_close(sync.running_var, reference.running_var)
        assert sync.num_batches_tracked.item() == 1

    ((outputs[0] - target[:3]).square().sum() + (outputs[1] - target[3:]).square().sum()).backward()
    (expected - target).square().sum().backward()
    torch.testing.assert_close(torch.cat([p.grad for p in parts]), full.grad)
    torch.testing.assert_close(syncs[0].weight.grad + syncs[1].weight.grad, reference.weight.grad)
    torch.testing.assert_close(syncs[0].bias.grad + syncs[1].bias.grad, reference.bias.grad)


def test_cpu_path_without_momentum_takes_the_cumulative_average(two_ranks):
    torch.manual_seed(1)
    reference = nn.BatchNorm2d(2, momentum=None, affine=False)
    syncs = [SyncBatchNormPlugin().apply(nn.Sequential(copy.deepcopy(reference)))[0] for _ in range(2)]
    for _ in range(3):
        x = torch.randn(4, 2, 2, 2) + 3
        two_ranks.run(lambda rank, part: syncs[rank](part), [x[:2], x[2:]])
        reference(x)
    torch.testing.assert_close(syncs[1].running_mean, reference.running_mean)
    torch.testing.assert_close(syncs[1].running_var, reference.running_var)


def test_eval_mode_and_a_single_process_do_not_all_reduce(monkeypatch):
    calls = []
    monkeypatch.setattr(sync_batchnorm, "all_reduce", lambda t, group=None: calls.append(t) or t)
    sync = SyncBatchNormPlugin().apply(nn.Sequential(nn.BatchNorm2d(3)))[0]
    sync(torch.randn(2, 3, 4, 4))  # not initialised: one process
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    sync.eval()(torch.randn(2, 3, 4, 4))  # eval: running statistics, no collective
    assert calls == []


def test_bad_inputs_raise():
    sync = SyncBatchNormPlugin().apply(nn.Sequential(nn.BatchNorm2d(3)))[0]
    with pytest.raises(ValueError, match="expected at least 2D input"):
        sync._check_input_dim(torch.zeros(3))
    sync._check_input_dim(torch.zeros(2, 3))  # (N, C) is fine
    with pytest.raises(ValueError, match="^SyncBatchNorm number of input channels should be non-zero$"):
        sync._check_non_zero_input_channels(torch.zeros(2, 0, 3))


def test_the_collectives_use_the_modules_process_group_else_the_world(two_ranks, monkeypatch):
    world, subgroup, asked = object(), object(), []
    monkeypatch.setattr(torch.distributed, "group", SimpleNamespace(WORLD=world))
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: asked.append(group) or 2)
    groups = []
    reduce = two_ranks.all_reduce
    monkeypatch.setattr(sync_batchnorm, "all_reduce", lambda t, group=None: groups.append(group) or reduce(t))
    syncs = [SyncBatchNormPlugin().apply(nn.Sequential(nn.BatchNorm1d(3)))[0] for _ in range(2)]
    syncs[1].process_group = subgroup
    x = torch.randn(4, 3)  # (N, C): a 2-D input is a valid BatchNorm1d input
    two_ranks.run(lambda rank, part: syncs[rank](part), [x[:2], x[2:]])
    assert sorted(map(id, groups)) == sorted(map(id, [world, world, subgroup, subgroup]))
    assert {id(g) for g in asked} == {id(None), id(subgroup)}  # the world size of the module's group


def test_the_output_has_the_inputs_dtype(two_ranks):
    syncs = [SyncBatchNormPlugin().apply(nn.Sequential(nn.BatchNorm2d(2)))[0] for _ in range(2)]
    x = torch.randn(4, 2, 3, 3).to(torch.bfloat16)
    outputs = two_ranks.run(lambda rank, part: syncs[rank](part), [x[:2], x[2:]])
    assert [o.dtype for o in outputs] == [torch.bfloat16] * 2 and syncs[0].running_mean.dtype == torch.float32
