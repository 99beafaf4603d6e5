"""DANet's channel attention module (CAM; Fu et al., CVPR 2019, arXiv 1809.02983, Sec. 3.3), docs/science.md
section 7. The queries and keys are the C channels of x, each a vector over the P positions:

    E_ab = x_a . x_b                                  (N, C, C), no embedding
    w_ab = softmax_b( max_c E_ac - E_ab )             = softmax_b( -x_a . x_b ): the row max cancels
    y_a  = sum_b w_ab x_b                             (N, C, P)
    out  = x + gamma * y                              gamma a learned scalar, 0 at init: the block starts as identity

Under autocast the energies and weights stay in float32. Inference takes out = x + (gamma w) x as one product that
adds x (``baddbmm``), with no (C, P) buffer for y. E is a Gram matrix: its backward is one product,
dL/dx = (G + G^T) x with G = dL/dE (``Gram``), where autograd, seeing x twice, computes two. The analyses get the
split of -x_a . x_b over channel keys (``TokenKeys("channels")``, covering no pixel); the pixel analyses have no
meaning for it (``undefined_analyses``).

mmseg 1.2.2: ``mmseg.models.decode_heads.da_head.CAM`` (``DAHead.cam``), key ``gamma.scale`` -> ours ``gamma``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

from dnlseg.context.base import CapturedAttention, CoupledAttention, implicit_split
from dnlseg.context.keys import TokenKeys

NO_PIXELS = "its queries and keys are the C channels, not pixels: no weight of it lies on the image"


class Gram(torch.autograd.Function):
    """E = X X^T of X (N, C, P) with the symmetric backward dL/dX = (G + G^T) X, G = dL/dE: one (C, C) @ (C, P)
    product where autograd, seeing X twice, takes two."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x @ x.transpose(1, 2)  # (N, C, P) @ (N, P, C) -> (N, C, C)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return (grad + grad.transpose(1, 2)) @ x  # (N, C, C) @ (N, C, P) -> (N, C, P)


class ChannelAttention2d(CoupledAttention):
    """DANet's channel attention, (N, C, H, W) -> (N, C, H, W); the identity at initialisation (gamma = 0).

    Args:
        in_channels: C, channels of the input feature map (CAM has no embedding: C only checks the input).
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"out": ("gamma",)}
    undefined_analyses: ClassVar[dict[str, str]] = {
        "attention_maps": NO_PIXELS,
        "category_consistency": NO_PIXELS,
        "boundary_consistency": NO_PIXELS,
    }
    mmseg_names: ClassVar[dict[str, str]] = {"gamma": "gamma.scale"}

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        if in_channels <= 0:
            raise ValueError(f"in_channels={in_channels} must be positive")
        self.in_channels = in_channels
        self.gamma = nn.Parameter(torch.zeros(()))  # mmcv's Scale(0): a 0-d parameter

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {C}")
        channels = x.reshape(N, C, H * W)  # (N, C, P): each channel a token of P features
        # Under autocast too in float32 (or wider): an energy sums P products, bf16 would lose its differences.
        with torch.autocast(x.device.type, enabled=False):
            channels = channels.to(torch.promote_types(channels.dtype, torch.float32))
            if channels.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
                energy = Gram.apply(channels)  # (N, C, C); its backward one product, not two
            else:
                energy = channels @ channels.transpose(1, 2)  # (N, C, P) @ (N, P, C) -> (N, C, C)
            weights = torch.softmax(energy.max(dim=-1, keepdim=True).values.expand_as(energy) - energy, dim=-1)
            if not torch.is_grad_enabled():  # inference: out = x + (gamma w) @ x, one product that adds x
                out = torch.baddbmm(channels, self.gamma * weights, channels)  # (N, C, P), no y beside it
                self.publish(lambda: self.capture(channels, weights @ channels))  # y computed for a capture only
                return out.reshape(N, C, H, W)
            y = weights @ channels  # (N, C, C) @ (N, C, P) -> (N, C, P)
        self.publish(lambda: self.capture(channels, y))
        return self.gamma * y.reshape(N, C, H, W) + x  # mmseg: gamma(out) + x

    def capture(self, channels: Tensor, y: Tensor) -> CapturedAttention:
        """Queries -x_a, keys x_b, values x_b (N, C, P): the split of -x_a . x_b over the C channel keys."""
        C = channels.shape[1]
        return implicit_split(
            -channels, channels, channels, y, (C, 1), (C, 1), self.combine, TokenKeys("channels"), "channels"
        )
