"""OCR's object-contextual representations (Yuan et al., ECCV 2020, arXiv 1909.11065, Sec. 3.2), docs/science.md
section 7. A coarse segmentation l (N, K, H, W) -- the logits of the auxiliary FCN head -- gives K soft object
regions; each pixel then attends over the K regions:

    spatial gather   r_k = sum_n softmax_n( s l_kn ) x_n                 (N, K, C): one feature per class region
    q = f_q(x) (N, C', P),  k = f_k(r), v = f_v(r) (N, C', K)            f_q, f_k: 2 x (conv + BN + ReLU); f_v: 1
    w_ik = softmax_k( q_i . k_k / sqrt(C') )                              each pixel over the K regions
    y_i  = f_out( sum_k w_ik v_k )                                        conv + BN + ReLU: C' -> C
    out  = ReLU(BN(W_b [y ; x]))                                         the bottleneck over y beside x

The keys are the K class regions (``TokenKeys("class regions")``), each covering the pixels with its gather weights
softmax_n(s l_kn). Not the identity at initialisation (mmseg initialises no layer to zero).

mmseg 1.2.2: ``OCRHead.spatial_gather_module`` (``SpatialGatherModule``, no weights) and
``OCRHead.object_context_block`` (``ObjectAttentionBlock``, ``scale`` 1: no query pooling), keys
``{query,key,value,out}_project`` and ``bottleneck`` -> ours ``query``, ``key``, ``value``, ``out``, ``bottleneck``
(``ConvModule``'s ``conv``/``bn`` kept).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.base import CoupledAttention, implicit_split
from dnlseg.context.keys import TokenKeys
from dnlseg.context.layers import ConvNormAct, NormLayer, conv_norm_acts


def spatial_gather(x: Tensor, logits: Tensor, scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """OCR's region features: x (N, C, H, W), logits (N, K, H, W) -> regions (N, C, K, 1) (mmseg's layout) and the
    gather weights softmax_n(s l_kn) (N, K, P)."""
    N, K, H, W = logits.shape
    weights = torch.softmax(scale * logits.reshape(N, K, H * W), dim=2)  # (N, K, P), each region sums to 1
    regions = weights @ x.flatten(2).transpose(1, 2)  # (N, K, P) @ (N, P, C) -> (N, K, C)
    return regions.transpose(1, 2).unsqueeze(3), weights  # (N, C, K, 1)


class ObjectContextAttention2d(CoupledAttention):
    """OCR's spatial gather and object attention, (x (N, C, H, W), logits (N, K, H, W)) -> (N, C, H, W).

    Args:
        in_channels: C (mmseg's OCRHead: ``channels`` 512).
        reduction: C' = C // reduction, the attention's channels (mmseg: ``ocr_channels`` 256 of 512).
        scale: s, the coarse logits' factor in the gather softmax (mmseg: 1).
        norm_layer: the norm after each conv.
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"out": ("out", "bottleneck")}
    undefined_analyses: ClassVar[dict[str, str]] = {
        "boundary_consistency": "its keys are class regions, not pixels: no key lies on a boundary"
    }
    mmseg_names: ClassVar[dict[str, str]] = {
        "query": "object_context_block.query_project",
        "key": "object_context_block.key_project",
        "value": "object_context_block.value_project",
        "out": "object_context_block.out_project",
        "bottleneck": "object_context_block.bottleneck",
    }

    def __init__(
        self, in_channels: int, reduction: int = 2, scale: float = 1.0, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        if in_channels <= 0 or reduction <= 0 or in_channels % reduction:
            raise ValueError(f"in_channels={in_channels} must be a positive multiple of reduction={reduction}")
        self.channels, self.scale = in_channels // reduction, scale
        self.query = conv_norm_acts(in_channels, self.channels, 2, norm_layer)  # f_q: C -> C' -> C'
        self.key = conv_norm_acts(in_channels, self.channels, 2, norm_layer)  # f_k on the regions
        self.value = ConvNormAct(in_channels, self.channels, norm_layer)  # f_v: C -> C'
        self.out = ConvNormAct(self.channels, in_channels, norm_layer)  # f_out: C' -> C
        self.bottleneck = ConvNormAct(2 * in_channels, in_channels, norm_layer)  # W_b: 2C -> C

    def forward(self, x: Tensor, logits: Tensor) -> Tensor:
        N, C, H, W = x.shape
        if logits.shape[0] != N or logits.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"coarse logits {tuple(logits.shape)} do not match the feature map {tuple(x.shape)}")
        regions, cover = spatial_gather(x, logits, self.scale)  # (N, C, K, 1), (N, K, P)
        q = self.query(x).flatten(2)  # (N, C', P): channel-first throughout, no copies to tokens
        k, v = self.key(regions).flatten(2), self.value(regions).flatten(2)  # (N, C', K)
        sim = (q.transpose(1, 2) @ k) * self.channels**-0.5  # (N, P, C') @ (N, C', K) -> (N, P, K)
        weights = torch.softmax(sim, dim=-1)
        y = v @ weights.transpose(1, 2)  # (N, C', K) @ (N, K, P) -> (N, C', P)
        y_tokens = y.transpose(1, 2)  # (N, P, C'): the captured output, on the path to the loss (dL/dy exists)
        self.publish(lambda: self.capture(q, k, v, y_tokens, cover, (H, W)))
        context = self.out(y_tokens.transpose(1, 2).reshape(N, self.channels, H, W))  # (N, C, H, W); y's memory
        return self.bottleneck(torch.cat([context, x], dim=1))

    def capture(self, q: Tensor, k: Tensor, v: Tensor, y: Tensor, cover: Tensor, size: tuple[int, int]):
        """The factors from the channel-first q (N, C', P), k, v (N, C', K) and the tokens y (N, P, C')."""
        regions = TokenKeys("class regions", cover, size)  # (N, K, P): each region's gather weights
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # tokens: (N, P or K, C')
        return implicit_split(q * self.channels**-0.5, k, v, y, size, (k.shape[1], 1), self.combine, regions)
