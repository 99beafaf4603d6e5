"""ANN's head (Zhu et al., ICCV 2019, arXiv 1908.07678, Sec. 3.4-3.5), docs/science.md section 7.

    f = AFNB(x_3, x_4)                  (N, C_4, h, w)  stage-4 pixels attend to stage 3's pyramid cells
    g = APNB(conv_3x3(dropout(f)))      (N, C, h, w)    the head's own pixels attend to its own pyramid cells
    logits = W_seg dropout(g)           (N, K, h, w)

mmseg 1.2.2's ``ANNHead`` layer for layer (``fusion``, ``bottleneck``, ``context``, ``conv_seg``; one Dropout2d
used twice), on ``in_index`` (2, 3): the stage before the last and the last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor, nn

from dnlseg.context.asymmetric_non_local import POOL_SCALES, AsymmetricFusionNonLocal2d, AsymmetricPyramidNonLocal2d
from dnlseg.context.layers import ConvNormAct
from dnlseg.models.heads.base import DecodeHead


class ANNHead(DecodeHead):
    """ANN's head, (stage 3 (N, C_3, h, w), stage 4 (N, C_4, h, w)) -> logits (N, K, h, w) (module docstring).

    Args:
        stage_channels: the encoder's feature widths; the head reads the last two.
        num_classes: K, classifier outputs.
        channels: C, the width after the bottleneck (``model.network.head_channels``; mmseg: 512).
        dropout: Dropout2d probability after the fusion and before the classifier (``model.network.dropout``).
        reduction: C' = C // reduction, both blocks' query, key and value width (mmseg: ``project_channels`` 256).
        pool_scales: the key pyramid's grids (1, 3, 6, 8: 110 cells).
    """

    inputs: ClassVar[tuple[str, ...]] = ("previous", "last")

    def __init__(
        self,
        stage_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        dropout: float = 0.1,
        *,
        reduction: int = 2,
        pool_scales: Sequence[int] = POOL_SCALES,
    ) -> None:
        super().__init__()
        low, high = stage_channels[-2], stage_channels[-1]
        if reduction <= 0 or channels % reduction:
            raise ValueError(f"channels={channels} must be a positive multiple of reduction={reduction}")
        self.fusion = AsymmetricFusionNonLocal2d(low, high, channels // reduction, high, pool_scales)
        self.bottleneck = ConvNormAct(high, channels, nn.BatchNorm2d, kernel_size=3)
        self.context = AsymmetricPyramidNonLocal2d(channels, reduction, channels, pool_scales)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, previous: Tensor, last: Tensor) -> Tensor:
        fused = self.fusion(previous, last)  # (N, C_4, h, w)
        y = self.context(self.bottleneck(self.dropout(fused)))  # (N, C, h, w)
        return self.conv_seg(self.dropout(y))
