"""CCNet's criss-cross attention (Huang et al., ICCV 2019, arXiv 1811.11721, Sec. 3.2), docs/science.md section 7.

    q = W_q x,  k = W_k x        (N, C', P), C' = C / 8;  v = W_v x  (N, C, P);  1x1 convs with bias
    K(i) = row of i  u  column of i          H + W - 1 keys, the query itself once
    w_ij = softmax_{j in K(i)}( q_i . k_j )            no 1/sqrt(C') scale
    y_i  = sum_{j in K(i)} w_ij v_j
    out  = x + gamma * y                               gamma a learned scalar, 0 at init: the block starts as identity

applied ``recurrence`` times with the same weights (RCCA, R = 2: every pixel reaches every other in two steps).
The fused path never builds more than the (N, P, H + W) logits (``keys.criss_cross_attention``); "materialized"
masks the (N, P, P) map (a reference). The steps run on pixel tokens (N, P, C), transposed once in and once out,
the three projections as one matrix product (mmcv: three convolutions per step). Each step publishes one
``CapturedAttention`` with ``CrissCrossKeys``.

mmseg 1.2.2: ``CCHead.cca`` is mmcv 2.1.0's ``mmcv.ops.CrissCrossAttention``, applied ``CCHead.recurrence`` times;
keys ``query_conv``, ``key_conv``, ``value_conv``, ``gamma.scale`` -> ours ``query``, ``key``, ``value``, ``gamma``.
"""

from __future__ import annotations

from typing import ClassVar, cast

import torch
from torch import Tensor, nn

from dnlseg.context.attention import tokens
from dnlseg.context.base import CoupledAttention, check_choice, implicit_split
from dnlseg.context.keys import CrissCrossKeys, criss_cross_attention
from dnlseg.context.non_local_base import ATTENTION_PATHS, AttentionPath


class CrissCrossAttention2d(CoupledAttention):
    """Recurrent criss-cross attention, (N, C, H, W) -> (N, C, H, W); the identity at initialisation (gamma = 0).

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction query/key channels (CCNet and mmcv: 8).
        recurrence: how many times the block is applied, sharing its weights (CCNet and mmseg's CCHead: 2).
        attention: "fused" (O(P (H + W)) memory) or "materialized" (the (P, P) map masked to the cross).
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"out": ("gamma",)}
    attention_paths: ClassVar[tuple[str, ...]] = ATTENTION_PATHS
    mmseg_names: ClassVar[dict[str, str]] = {
        "query": "query_conv",
        "key": "key_conv",
        "value": "value_conv",
        "gamma": "gamma.scale",
    }
    mmseg_attribute = "cca"  # CCHead's

    def __init__(
        self, in_channels: int, reduction: int = 8, recurrence: int = 2, attention: AttentionPath = "fused"
    ) -> None:
        super().__init__()
        if in_channels <= 0 or reduction <= 0 or in_channels % reduction:
            raise ValueError(f"in_channels={in_channels} must be a positive multiple of reduction={reduction}")
        if recurrence < 1:
            raise ValueError(f"recurrence={recurrence} must be at least 1")
        check_choice("attention", attention, ATTENTION_PATHS)
        self.in_channels, self.channels = in_channels, in_channels // reduction
        self.recurrence, self.attention = recurrence, attention
        self.query = nn.Conv2d(in_channels, self.channels, 1)  # W_q: C -> C'
        self.key = nn.Conv2d(in_channels, self.channels, 1)  # W_k: C -> C'
        self.value = nn.Conv2d(in_channels, in_channels, 1)  # W_v: C -> C
        self.gamma = nn.Parameter(torch.zeros(()))  # mmcv's Scale(0): a 0-d parameter

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        t = tokens(x)  # (N, P, C): the steps run on pixel tokens, transposed once in and once out
        for _ in range(self.recurrence):
            t = self.step(t, (H, W))
        return t.transpose(1, 2).reshape(N, C, H, W).contiguous()

    def step(self, t: Tensor, size: tuple[int, int]) -> Tensor:
        """One criss-cross attention on tokens t (N, P, C): t + gamma * y. W_q, W_k and W_v run as one
        (N P, C) @ (C, 2 C' + C) product; q, k and v are views of its output."""
        N, P, C = t.shape
        convs = (self.query, self.key, self.value)  # 1x1 convs with bias
        weight = torch.cat([conv.weight for conv in convs]).flatten(1)  # (D, C), D = 2 C' + C
        bias = torch.cat([cast(Tensor, conv.bias) for conv in convs])  # (D,)
        qkv = torch.addmm(bias, t.reshape(N * P, C), weight.t()).view(N, P, -1)  # (N P, C) @ (C, D)
        q, k, v = qkv.split([self.channels, self.channels, C], dim=2)  # (N, P, C'), (N, P, C'), (N, P, C)
        keys = CrissCrossKeys(size)
        if self.attention == "materialized":
            outside = keys.mask(None)[0].logical_not()  # (P, P): True off the query's row and column
            logits = (q @ k.transpose(1, 2)).masked_fill(outside, float("-inf"))  # (N, P, C') @ (N, C', P)
            y = torch.softmax(logits, dim=-1) @ v  # (N, P, P) @ (N, P, C) -> (N, P, C)
        else:
            y = criss_cross_attention(q, k, v, size)  # (N, P, C) through (N, H, W, H + W) logits
        self.publish(lambda: implicit_split(q, k, v, y, size, size, keys.restrict(self.combine), keys))
        return torch.addcmul(t, self.gamma, y)  # t + gamma * y; mmcv: gamma(out) + x
