"""Global context block (GCNet; Cao et al., ICCVW 2019, arXiv 1904.11492), docs/science.md section 3.

    u_j = W_k x_j                                     attention pooling logits, a 1x1 conv C -> 1   (N, 1, P)
    c   = sum_j softmax_j(u_j) x_j                    one global context vector per image          (N, C)
    t   = W_2 ReLU(LayerNorm(W_1 c))                  bottleneck transform, C -> C / reduction -> C
    out = x + t                                       fused by addition, broadcast over positions

It is the unary term alone, with a transform instead of a value projection: in the contract's terms the pairwise
term is absent, u is the unary logit, the values are x itself and every query receives the same vector y = c.
``W_2`` is zero-initialised (GCNet's ``last_zero_init``), so the block starts as the identity.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.attention import tokens
from dnlseg.context.base import CapturedAttention, ContextBlock


class GlobalContext2d(ContextBlock):
    """GCNet's global context block, (N, C, H, W) -> (N, C, H, W); the identity at initialisation.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: bottleneck width C / reduction of the transform (GCNet: 16 in backbones; mmseg's GCHead: 4).
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"unary": ("unary",), "out": ("out",)}
    # mmcv's ContextBlock(pooling_type="att", fusion_types=("channel_add",)), GCHead's ``gc_block``
    mmseg_names: ClassVar[dict[str, str]] = {"unary": "conv_mask", "out": "channel_add_conv"}
    mmseg_attribute = "gc_block"

    def __init__(self, in_channels: int, reduction: int = 4) -> None:
        super().__init__()
        if in_channels <= 0 or reduction <= 0 or in_channels % reduction:
            raise ValueError(
                f"in_channels={in_channels} must be a positive multiple of reduction={reduction} "
                "(the transform's bottleneck is in_channels / reduction wide)"
            )
        hidden = in_channels // reduction
        self.in_channels = in_channels
        self.unary = nn.Conv2d(in_channels, 1, 1)  # W_k: C -> 1
        last = nn.Conv2d(hidden, in_channels, 1)  # W_2, zero: the block starts as the identity
        self.out = nn.Sequential(  # the transform W_2 ReLU(LN(W_1 c))
            nn.Conv2d(in_channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            last,
        )
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)

    def combine(
        self, pairwise_logits: Tensor | None, unary_logits: Tensor | None, rows: Tensor | None = None
    ) -> Tensor:
        """w_ij = softmax_j(u_j): the same weights for every query."""
        if unary_logits is None:
            raise ValueError("GlobalContext2d's weights need its unary logits")
        return torch.softmax(unary_logits, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.transform(x)  # (N, C, 1, 1) broadcast over H, W

    def transform(self, x: Tensor) -> Tensor:
        """t = W_2 ReLU(LN(W_1 c)), (N, C, 1, 1), from x (N, C, H, W)."""
        N, C, H, W = x.shape
        u = self.unary(x).flatten(2)  # (N, 1, H, W) -> (N, 1, P)
        v = tokens(x)  # (N, P, C): the values are the input itself
        y = torch.softmax(u, dim=-1) @ v  # (N, 1, P) @ (N, P, C) -> (N, 1, C)
        self.publish(lambda: CapturedAttention(None, None, u, v, y, (H, W), (H, W), self.combine))
        return self.out(y.transpose(1, 2)[..., None])  # (N, C, 1) -> (N, C, 1, 1)
