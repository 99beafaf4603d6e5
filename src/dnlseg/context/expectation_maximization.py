"""EMANet's expectation-maximisation attention unit (Li et al., ICCV 2019, arXiv 1907.13426, Sec. 3), docs/science.md
section 7. K bases mu (C, K) are re-estimated for every image by T EM iterations, without gradient:

    x  = W_in f                                     1x1 conv with bias, frozen (mmseg: "project (0, inf) -> R")
    E: z_nk = softmax_k( x_n . mu_k )               (N, P, K) responsibilities, no scale
    M: mu_k = normalise_2( sum_n z_nk x_n / sum_n z_nk )   l1-normalised over pixels, then l2 over channels
    (T times, from the bases buffer; under torch.no_grad)
    y_n = sum_k z_nk mu_k                           z of the last E-step, mu of the last M-step
    out = ReLU(f + BN(W_out ReLU(y)))               W_out: 1x1 conv C -> C (no bias under the norm)

Training updates the buffer: mu <- (1 - m) mu + m normalise_2(mean over images and processes of mu), m = 0.1,
in place (a ``BufferSnapshot`` of the module restores it after an analysis forward). No gradient reaches the
attention (y is computed from no_grad tensors only): the gradient analyses are undefined for it. The analyses get
queries x, keys the bases of the last E-step and values the final bases (``TokenKeys("bases")``, covering the
pixels with the l1-normalised responsibilities of the last E-step).

mmseg 1.2.2: the middle of ``EMAHead.forward`` (between ``ema_in_conv`` and ``bottleneck``): ``ema_mid_conv``,
``ema_module`` (``EMAModule``), ``ema_out_conv``; keys ``ema_mid_conv.conv``, ``ema_module.bases``,
``ema_out_conv.{conv,bn}`` -> ours ``embed.conv``, ``bases``, ``out.{conv,bn}``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.context.base import CoupledAttention, implicit_split
from dnlseg.context.keys import TokenKeys
from dnlseg.context.layers import ConvNormAct, NormLayer

NO_GRADIENT = "its EM iterations run under torch.no_grad: no gradient reaches the attention logits"


def all_reduce(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over the processes (the collective; tests inject one that runs ranks as threads)."""
    tensor = tensor.clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_over_processes(tensor: Tensor) -> Tensor:
    """``tensor`` averaged over the processes of the default group (itself in one process); mmseg's ``reduce_mean``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return all_reduce(tensor / dist.get_world_size())


class ExpectationMaximizationAttention2d(CoupledAttention):
    """EMANet's EMA unit, (N, C, H, W) -> (N, C, H, W) (module docstring); not the identity at initialisation
    (its ReLU after the residual sum, as in the paper and mmseg).

    Args:
        in_channels: C (mmseg's ``ema_channels``).
        num_bases: K (EMANet: 64).
        num_stages: T, EM iterations (EMANet: 3).
        momentum: m of the bases' moving average (0.1).
        norm_layer: the norm after ``out``.
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"query": (), "key": (), "value": (), "out": ("out",)}
    bases: Tensor  # buffer (1, C, K), registered in __init__
    undefined_analyses: ClassVar[dict[str, str]] = {
        "logit_gradients": NO_GRADIENT,
        "cross_sensitivity": NO_GRADIENT,
        "category_consistency": "its keys are bases: each a responsibility-weighted mean of every pixel, spread by "
        "the attention itself, so a base has no class of its own to compare with the query's",
        "boundary_consistency": "its keys are bases, not pixels: no key lies on a boundary",
    }
    mmseg_names: ClassVar[dict[str, str]] = {
        "embed": "ema_mid_conv",
        "bases": "ema_module.bases",
        "out": "ema_out_conv",
    }

    def __init__(
        self,
        in_channels: int,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or num_bases <= 0 or num_stages < 1:
            raise ValueError(f"in_channels={in_channels}, num_bases={num_bases} > 0 and num_stages={num_stages} >= 1")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum={momentum} must lie in [0, 1]")
        self.num_bases, self.num_stages, self.momentum = num_bases, num_stages, momentum
        self.embed = ConvNormAct(in_channels, in_channels, None, act=False)  # W_in, frozen as in mmseg
        self.embed.requires_grad_(False)
        self.out = ConvNormAct(in_channels, in_channels, norm_layer, act=False)  # W_out + BN
        bases = torch.randn(1, in_channels, num_bases) * math.sqrt(2.0 / num_bases)  # mmseg's initialisation
        self.register_buffer("bases", F.normalize(bases, dim=1, p=2))  # (1, C, K), unit columns

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        bases = self.bases.repeat(N, 1, 1)  # (N, C, K)
        with torch.no_grad():  # W_in is frozen and x reaches y through no_grad only: no graph for either
            feats = self.embed(x).reshape(N, C, H * W)  # (N, C, P)
            for _ in range(self.num_stages):
                keys = bases
                # base-major (N, K, P): the normalisation over the pixels runs along contiguous memory
                z = torch.softmax(bases.transpose(1, 2) @ feats, dim=1)  # E: (N, K, C) @ (N, C, P) -> (N, K, P)
                cover = F.normalize(z, dim=2, p=1)  # each base's weights over the pixels
                bases = F.normalize(feats @ cover.transpose(1, 2), dim=1, p=2)  # M: (N, C, P) @ (N, P, K) -> (N, C, K)
        y = bases @ z  # (N, C, K) @ (N, K, P) -> (N, C, P), no gradient to x
        self.publish(lambda: self.capture(feats, keys, bases, y.clone(), cover, (H, W)))  # a copy: ReLU'd next
        if self.training:
            self.update_bases(bases)
        context = self.out(F.relu(y.reshape(N, C, H, W), inplace=True))  # W_out + BN on ReLU(y), y has no graph
        return F.relu(x + context, inplace=True)

    @torch.no_grad()
    def update_bases(self, bases: Tensor) -> None:
        """mu <- (1 - m) mu + m normalise_2(mean of ``bases`` (N, C, K) over the images and the processes), in place."""
        mean = F.normalize(mean_over_processes(bases.mean(dim=0, keepdim=True)), dim=1, p=2)  # (1, C, K)
        self.bases.copy_((1 - self.momentum) * self.bases + self.momentum * mean)

    def capture(self, feats: Tensor, keys: Tensor, bases: Tensor, y: Tensor, cover: Tensor, size):
        """Queries x (N, P, C), keys the last E-step's bases (N, K, C), values the final bases (N, K, C); ``cover``
        (N, K, P) each base's l1-normalised responsibilities over the pixels."""
        covered = TokenKeys("bases", cover, size)  # (N, K, P): each base's weights on the pixels
        q, k, v = feats.transpose(1, 2).detach(), keys.transpose(1, 2), bases.transpose(1, 2)  # as the E-step saw them
        return implicit_split(q, k, v, y.transpose(1, 2), size, (self.num_bases, 1), self.combine, covered)
