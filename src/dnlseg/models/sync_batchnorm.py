"""SyncBatchNorm that also runs on CPU processes (gloo), for multi-process CPU runs and their tests.

PyTorch's ``nn.SyncBatchNorm`` has kernels for GPUs only, refuses CPU tensors, and DDP refuses to wrap a CPU
model holding one. ``SyncBatchNorm`` here has its parameters, buffers and state-dict keys but is not a
subclass (so DDP accepts it); on GPUs it runs ``nn.SyncBatchNorm``'s forward, on CPU it computes the batch
statistics over all processes with two differentiable all-reduces (``torch.distributed.nn``): the sum and
count for the mean, then the squared deviations for the variance:

    mean = sum_ranks sum(x) / n,    var = sum_ranks sum((x - mean)^2) / n,    n = sum_ranks N * H * W
    y = (x - mean) / sqrt(var + eps) * weight + bias
    running_var <- (1 - m) running_var + m * var * n / (n - 1)     (as BatchNorm does)

The backward of an all-reduce all-reduces the gradients, so each process's parameter gradient carries the
other processes' losses through the shared statistics, as with the GPU kernels. GPU tensors take
PyTorch's own path unchanged.

``SyncBatchNormPlugin`` is Lightning's ``TorchSyncBatchNorm`` layer-sync plugin converting to this class:
``trainer.plugins: [{class_path: dnlseg.models.sync_batchnorm.SyncBatchNormPlugin}]`` with ``sync_batchnorm: true``.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm

# torch 2.14 marks torch.distributed.nn's all_reduce deprecated in favour of _functional_collectives, a private
# module; the documented differentiable all-reduce stays here until there is a public successor.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")


class SyncBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm`` with a CPU path (module docstring); built from one by ``SyncBatchNormPlugin``."""

    process_group = None

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def forward(self, input: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1
        if input.device.type != "cpu" or not (self.training and distributed):
            return nn.SyncBatchNorm.forward(cast(nn.SyncBatchNorm, self), input)  # the same state (the plugin's swap)
        self._check_input_dim(input)
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype)
        totals = all_reduce(torch.cat([x.sum(dims), count]), group=group)  # (C + 1,)
        n = totals[-1]
        mean = totals[:-1] / n
        var = all_reduce((x - mean.view(shape)).square().sum(dims), group=group) / n  # biased, for normalising
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        if tracked is not None and running_mean is not None and running_var is not None:  # track_running_stats
            with torch.no_grad():
                tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                running_mean.lerp_(mean.detach().to(running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                running_var.lerp_(unbiased.to(running_var.dtype), m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


class SyncBatchNormPlugin(TorchSyncBatchNorm):
    """Lightning's SyncBatchNorm plugin, converting every BatchNorm to ``SyncBatchNorm`` (above)."""

    def apply(self, model: nn.Module) -> nn.Module:
        model = super().apply(model)  # BatchNorm*d -> nn.SyncBatchNorm, parameters and buffers kept
        for module in model.modules():
            if type(module) is nn.SyncBatchNorm:
                # the same state; only forward differs, and only on CPU (mypy refuses any assignment to __class__)
                module.__class__ = SyncBatchNorm  # type: ignore[assignment]
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if type(module) is SyncBatchNorm:
                module.__class__ = nn.SyncBatchNorm  # type: ignore[assignment]  # as in apply
        return super().revert(model)  # nn.SyncBatchNorm -> BatchNorm
