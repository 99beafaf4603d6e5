"""ISA's head (Huang et al., arXiv 1907.12273, Sec. 3), docs/science.md section 7.

    x' = conv_3x3(x)                                   (N, C, h, w)
    y  = ISA(x')                                       (N, C, h, w)  long-range, then short-range group attention
    logits = W_seg dropout(conv_1x1([y, x']))          (N, K, h, w)

mmseg 1.2.2's ``ISAHead`` layer for layer (``in_conv``, ``global_relation``, ``local_relation``, ``out_conv``,
``conv_seg``); its two relations are the block ``attention`` here (``mmseg_names``: no module of mmseg's at that
level).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.interlaced_sparse import InterlacedSparseAttention2d
from dnlseg.context.layers import ConvNormAct
from dnlseg.models.heads.base import DecodeHead


class ISAHead(DecodeHead):
    """ISA's head, last stage (N, C_in, h, w) -> logits (N, K, h, w) (module docstring).

    Args:
        stage_channels: the encoder's feature widths; the head reads the last.
        num_classes: K, classifier outputs.
        channels: C, the head's width (``model.network.head_channels``; mmseg: 512).
        dropout: Dropout2d probability before the classifier (``model.network.dropout``).
        reduction: C' = C // reduction, the query and key width (mmseg: ``isa_channels`` 256).
        group_size: (gh, gw), the tile of the short-range groups (mmseg's ``down_factor``: 8 x 8).
    """

    mmseg_names: ClassVar[dict[str, str]] = {"attention": ""}

    def __init__(
        self,
        stage_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        dropout: float = 0.1,
        *,
        reduction: int = 2,
        group_size: tuple[int, int] = (8, 8),
    ) -> None:
        super().__init__()
        self.in_conv = ConvNormAct(stage_channels[-1], channels, nn.BatchNorm2d, kernel_size=3)
        self.attention = InterlacedSparseAttention2d(channels, reduction, group_size)
        self.out_conv = ConvNormAct(2 * channels, channels, nn.BatchNorm2d)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, last: Tensor) -> Tensor:
        x = self.in_conv(last)  # (N, C, h, w)
        y = self.out_conv(torch.cat([self.attention(x), x], dim=1))  # (N, 2C, h, w) -> (N, C, h, w)
        return self.conv_seg(self.dropout(y))
