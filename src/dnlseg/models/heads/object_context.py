"""OCR's head (Yuan et al., ECCV 2020, arXiv 1909.11065, Sec. 3.2), docs/science.md section 7.

The second stage of a cascade: the aux FCN head on the stage before the last gives coarse logits l (mmseg's
``decode_head.0``, trained with its own loss at weight 0.4, dnlseg's aux head), and

    x' = conv_3x3(x)                               (N, C, h, w)
    f  = OCR(x', l)                                (N, C, h, w)  pixels attend to the K soft class regions of l
    logits = W_seg dropout(f)                      (N, K, h, w)

mmseg 1.2.2's ``OCRHead`` layer for layer (``bottleneck``, ``spatial_gather_module``, ``object_context_block``,
``conv_seg``); the gather and the object attention are the block ``attention`` here (``mmseg_names``). mmseg's
``CascadeEncoderDecoder`` runs the FCN stage a second time in training to get l (a second dropout mask, a second
BatchNorm update); dnlseg runs it once and feeds the same logits to its loss and to OCR. Where the two stages
differ in size (a shallower encoder than mmseg's dilated ones) the logits are resized to the last stage's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.context.layers import ConvNormAct
from dnlseg.context.object_context import ObjectContextAttention2d
from dnlseg.models.heads.base import DecodeHead


class OCRHead(DecodeHead):
    """OCR's head, (last stage (N, C_in, h, w), the aux head's logits (N, K, h, w)) -> logits (N, K, h, w).

    Args:
        stage_channels: the encoder's feature widths; the head reads the last.
        num_classes: K, classifier outputs.
        channels: C, the head's width (``model.network.head_channels``; mmseg: 512).
        dropout: Dropout2d probability before the classifier (``model.network.dropout``).
        reduction: C' = C // reduction, the object attention's width (mmseg: ``ocr_channels`` 256).
        scale: s, the factor of the coarse logits in the gather softmax (mmseg: 1).
    """

    inputs: ClassVar[tuple[str, ...]] = ("last", "coarse")
    mmseg_names: ClassVar[dict[str, str]] = {"attention": ""}

    def __init__(
        self,
        stage_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        dropout: float = 0.1,
        *,
        reduction: int = 2,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.bottleneck = ConvNormAct(stage_channels[-1], channels, nn.BatchNorm2d, kernel_size=3)
        self.attention = ObjectContextAttention2d(channels, reduction, scale)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, last: Tensor, coarse: Tensor) -> Tensor:
        if coarse.shape[-2:] != last.shape[-2:]:  # an encoder whose last two stages differ in size (not mmseg's d8)
            coarse = F.interpolate(coarse, size=last.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv_seg(self.dropout(self.attention(self.bottleneck(last), coarse)))
