"""EMANet's head (Li et al., ICCV 2019, arXiv 1907.13426, Sec. 3), docs/science.md section 7.

    x' = conv_3x3(x)                               (N, C_ema, h, w)  C_ema = ``model.network.head_channels``
    y  = EMA(x')                                   (N, C_ema, h, w)  ReLU(x' + BN(W_out ReLU(bases z^T))), bases
                                                   moved by momentum in training, no gradient through the EM steps
    f  = conv_3x3([x, conv_3x3(y)])                (N, C, h, w)      with ``concat_input`` (mmseg's configs: on)
    logits = W_seg dropout(f)                      (N, K, h, w)

mmseg 1.2.2's ``EMAHead`` layer for layer (``ema_in_conv``, ``ema_mid_conv``, ``ema_module``, ``ema_out_conv``,
``bottleneck``, ``conv_cat``, ``conv_seg``); the middle three are the block ``attention`` here (``mmseg_names``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.expectation_maximization import ExpectationMaximizationAttention2d
from dnlseg.context.layers import ConvNormAct
from dnlseg.models.heads.base import DecodeHead


class EMAHead(DecodeHead):
    """EMANet's head, last stage (N, C_in, h, w) -> logits (N, K, h, w) (module docstring).

    Args:
        stage_channels: the encoder's feature widths; the head reads the last.
        num_classes: K, classifier outputs.
        channels: C_ema, the width the EM attention works at (``model.network.head_channels``; mmseg's
            ``ema_channels``: 512).
        dropout: Dropout2d probability before the classifier (``model.network.dropout``).
        out_channels: C, the width after the bottleneck (None: C_ema // 2, mmseg's ``channels`` 256).
        num_bases: K_b, the bases (mmseg: 64).
        num_stages: EM iterations (mmseg: 3).
        momentum: of the bases' moving average (mmseg: 0.1).
        concat_input: concatenate the input before the last conv (mmseg's configs: true).
    """

    mmseg_names: ClassVar[dict[str, str]] = {"attention": ""}

    def __init__(
        self,
        stage_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        dropout: float = 0.1,
        *,
        out_channels: int | None = None,
        num_bases: int = 64,
        num_stages: int = 3,
        momentum: float = 0.1,
        concat_input: bool = True,
    ) -> None:
        super().__init__()
        in_channels, ema_channels = stage_channels[-1], channels
        channels = out_channels or ema_channels // 2
        self.ema_in_conv = ConvNormAct(in_channels, ema_channels, nn.BatchNorm2d, kernel_size=3)
        self.attention = ExpectationMaximizationAttention2d(ema_channels, num_bases, num_stages, momentum)
        self.bottleneck = ConvNormAct(ema_channels, channels, nn.BatchNorm2d, kernel_size=3)
        cat = ConvNormAct(in_channels + channels, channels, nn.BatchNorm2d, kernel_size=3) if concat_input else None
        self.conv_cat = cat
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, last: Tensor) -> Tensor:
        y = self.bottleneck(self.attention(self.ema_in_conv(last)))  # (N, C, h, w)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([last, y], dim=1))  # (N, C_in + C, h, w) -> (N, C, h, w)
        return self.conv_seg(self.dropout(y))
