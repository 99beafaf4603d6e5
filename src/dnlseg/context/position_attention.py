"""DANet's position attention module (PAM; Fu et al., CVPR 2019, arXiv 1809.02983, Sec. 3.2), docs/science.md
section 7.

    q = W_q x,  k = W_k x        (N, C', P), C' = C / 8;  1x1 convs with bias
    v = W_v x                    (N, C, P): the value keeps the C channels, there is no output conv
    w_ij = softmax_j( q_i . k_j )                     no 1/sqrt(C') scale
    y_i  = sum_j w_ij v_j
    out  = x + gamma * y                              gamma a learned scalar, 0 at init: the block starts as identity

The keys are every pixel (``GridKeys``); the analyses get NL's implicit decomposition p_ij + u_j (docs/science.md
section 2). mmseg 1.2.2: ``mmseg.models.decode_heads.da_head.PAM`` (``DAHead.pam``), keys ``query_project``,
``key_project``, ``value_project``, ``gamma.scale`` -> ours ``query``, ``key``, ``value``, ``gamma``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.attention import fused_attention
from dnlseg.context.base import CoupledAttention, check_choice, implicit_split
from dnlseg.context.layers import pointwise_conv
from dnlseg.context.non_local_base import ATTENTION_PATHS, AttentionPath


class PositionAttention2d(CoupledAttention):
    """DANet's position attention, (N, C, H, W) -> (N, C, H, W); the identity at initialisation (gamma = 0).

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction query/key channels (DANet and mmseg: 8; mmseg's ``pam_channels`` = C').
        attention: "fused" (no (P, P) map: on CPU row-blocked with the attention recomputed in the backward, as
            Cv = C != C') or "materialized" (mmseg's).
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"out": ("gamma",)}
    attention_paths: ClassVar[tuple[str, ...]] = ATTENTION_PATHS
    mmseg_names: ClassVar[dict[str, str]] = {
        "query": "query_project",
        "key": "key_project",
        "value": "value_project",
        "gamma": "gamma.scale",
    }

    def __init__(self, in_channels: int, reduction: int = 8, attention: AttentionPath = "fused") -> None:
        super().__init__()
        if in_channels <= 0 or reduction <= 0 or in_channels % reduction:
            raise ValueError(f"in_channels={in_channels} must be a positive multiple of reduction={reduction}")
        check_choice("attention", attention, ATTENTION_PATHS)
        self.in_channels, self.channels, self.attention = in_channels, in_channels // reduction, attention
        self.query = nn.Conv2d(in_channels, self.channels, 1)  # W_q: C -> C'
        self.key = nn.Conv2d(in_channels, self.channels, 1)  # W_k: C -> C'
        self.value = nn.Conv2d(in_channels, in_channels, 1)  # W_v: C -> C
        self.gamma = nn.Parameter(torch.zeros(()))  # mmcv's Scale(0): a 0-d parameter

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        # (N, P, C'), (N, P, C'), (N, P, C): views of the conv outputs (N, C', P), no copy
        q, k, v = (pointwise_conv(x, conv).flatten(2).transpose(1, 2) for conv in (self.query, self.key, self.value))
        if self.attention == "materialized":
            w = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (N, P, C') @ (N, C', P) -> (N, P, P)
            y = w @ v  # (N, P, P) @ (N, P, C) -> (N, P, C)
        else:
            y = fused_attention(q, k, v, scale=1.0)  # (N, P, C), no (P, P) map
        self.publish(lambda: implicit_split(q, k, v, y, (H, W), (H, W), self.combine))
        return self.gamma * y.transpose(1, 2).reshape(N, C, H, W) + x  # mmseg: gamma(out) + x
