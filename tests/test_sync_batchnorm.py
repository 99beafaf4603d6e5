"""The CPU-capable SyncBatchNorm keeps BatchNorm's state and, in one process, computes what BatchNorm does."""

import torch
from torch import nn

from dnlseg.sync_batchnorm import SyncBatchNorm, SyncBatchNormPlugin


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
