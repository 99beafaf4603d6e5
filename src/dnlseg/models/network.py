"""The segmentation network: smp encoder -> context head (+ auxiliary FCN head). A plain nn.Module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, cast

import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.models.encoder import build_encoder
from dnlseg.models.heads import ContextHead, FCNHead


class SegmentationOutput(NamedTuple):
    logits: Tensor  # (N, classes, H, W), upsampled to the input size
    aux_logits: Tensor | None  # (N, classes, H, W) from stage 3, or None without an aux head


class SegmentationNetwork(nn.Module):
    """Encoder at output stride 8/16 with the decode head of docs/science.md section 4.

    Inputs of any size work: logits are upsampled bilinearly to the input size, so H, W need not be
    multiples of the output stride.

    Args:
        num_classes: classifier outputs.
        encoder_name: smp encoder (``resnet50``/``resnet101`` in the paper recipes, ``resnet18`` for synthetic).
        encoder_weights: None, or a local state-dict file (never a download).
        output_stride: 8 (paper) or 16.
        head_channels: width of the context head (512 in the paper; C' = head_channels / reduction).
        context: builds the context block from ``head_channels``; None for the baseline head.
        aux_channels: width of the auxiliary FCN head on stage 3; 0 turns the aux head off.
        dropout: Dropout2d before each classifier.
        encoder_depth: 5 (the paper); 3 or 4 end a ResNet early (see ``build_encoder``). The context head
            reads the last stage, the aux head the one before.
        align_corners: of the bilinear upsampling of both heads' logits (mmseg's 769x769 configs: True).
    """

    def __init__(
        self,
        num_classes: int,
        encoder_name: str = "resnet50",
        encoder_weights: str | Path | None = None,
        output_stride: int = 8,
        head_channels: int = 512,
        context: Callable[[int], nn.Module] | None = None,
        aux_channels: int = 256,
        dropout: float = 0.1,
        encoder_depth: int = 5,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.encoder = build_encoder(encoder_name, output_stride, encoder_weights, encoder_depth)
        stage3_channels, stage4_channels = cast(Sequence[int], self.encoder.out_channels)[-2:]  # smp: stage widths
        self.decode_head = ContextHead(stage4_channels, head_channels, num_classes, context, dropout)
        self.aux_head = FCNHead(stage3_channels, aux_channels, num_classes, dropout) if aux_channels > 0 else None
        self.align_corners = align_corners

    def forward(self, images: Tensor) -> SegmentationOutput:
        """images (N, 3, H, W) -> logits (N, classes, H, W) and, in training, aux logits."""
        size = images.shape[-2:]
        features = self.encoder(images)  # [input, stage 1 .. depth]; the last two feed the aux and context heads
        logits = self.upsample(self.decode_head(features[-1]), size)
        aux = None
        if self.aux_head is not None and self.training:
            aux = self.upsample(self.aux_head(features[-2]), size)
        return SegmentationOutput(logits, aux)

    def upsample(self, logits: Tensor, size) -> Tensor:
        """Bilinear resize of logits (N, K, h, w) to ``size`` with the heads' ``align_corners`` (no-op when equal)."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)
