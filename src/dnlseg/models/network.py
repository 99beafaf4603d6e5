"""The segmentation network: smp encoder -> context head (+ auxiliary FCN head). A plain nn.Module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple, cast

import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.models.encoder import EncoderOptions, build_encoder
from dnlseg.models.heads import ContextHead, FCNHead


class SegmentationOutput(NamedTuple):
    logits: Tensor  # (N, classes, H, W), upsampled to the input size
    aux_logits: Tensor | None  # (N, classes, H, W) from stage 3, or None without an aux head


@dataclass(frozen=True)
class NetworkOptions:
    """The network's shape (``model.network``): encoder, context head, aux head (docs/science.md section 4).

    Args:
        encoder: the backbone: smp encoder ``name``, ``weights`` file, ``depth``, ``output_stride``.
        head_channels: width of the context head (512 in the paper; C' = head_channels / reduction).
        context: the context block, e.g. ``class_path: dnlseg.context.DisentangledNonLocal2d`` with its
            ``init_args`` (its ``in_channels`` is ``head_channels``); null for the baseline head.
        aux_channels: width of the auxiliary FCN head on the stage before the last; 0 turns the aux head off
            (as does ``model.loss.aux_weight: 0``).
        dropout: Dropout2d before each classifier.
        align_corners: of the bilinear upsampling of both heads' logits, in training and evaluation (mmseg's
            769x769 Cityscapes configs: true).
    """

    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    head_channels: int = 512
    context: Callable[[int], nn.Module] | None = None
    aux_channels: int = 256
    dropout: float = 0.1
    align_corners: bool = False


class SegmentationNetwork(nn.Module):
    """Encoder at output stride 8/16 with the decode head of docs/science.md section 4.

    Inputs of any size work: logits are upsampled bilinearly to the input size, so H, W need not be
    multiples of the output stride.

    Args:
        num_classes: classifier outputs.
        encoder: the smp encoder (``EncoderOptions``: ``resnet50``/``resnet101`` in the paper recipes, ``resnet18``
            for synthetic; ``depth`` 3 or 4 ends a ResNet early). The context head reads the last stage, the aux
            head the one before.
        head_channels: width of the context head (512 in the paper; C' = head_channels / reduction).
        context: builds the context block from ``head_channels``; None for the baseline head.
        aux_channels: width of the auxiliary FCN head on stage 3; 0 turns the aux head off.
        dropout: Dropout2d before each classifier.
        align_corners: of the bilinear upsampling of both heads' logits (mmseg's 769x769 configs: True).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        encoder: EncoderOptions = EncoderOptions(),
        head_channels: int = 512,
        context: Callable[[int], nn.Module] | None = None,
        aux_channels: int = 256,
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be >= 1")
        self.encoder_options = encoder  # e.g. its output_stride, for the export's metadata
        self.encoder = build_encoder(
            encoder.name, output_stride=encoder.output_stride, weights=encoder.weights, depth=encoder.depth
        )
        stage3_channels, stage4_channels = cast(Sequence[int], self.encoder.out_channels)[-2:]  # smp: stage widths
        self.decode_head = ContextHead(
            in_channels=stage4_channels,
            channels=head_channels,
            num_classes=num_classes,
            context=context,
            dropout=dropout,
        )
        self.aux_head = (
            FCNHead(in_channels=stage3_channels, channels=aux_channels, num_classes=num_classes, dropout=dropout)
            if aux_channels > 0
            else None
        )
        self.align_corners = align_corners

    @classmethod
    def from_options(cls, options: NetworkOptions, *, num_classes: int) -> SegmentationNetwork:
        """The network ``options`` (``model.network``) describe, with ``num_classes`` outputs."""
        return cls(num_classes=num_classes, **{f.name: getattr(options, f.name) for f in fields(options)})

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
