"""The segmentation network: smp encoder -> decode head (+ auxiliary FCN head). A plain nn.Module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import NamedTuple, cast

import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.models.encoder import EncoderOptions, build_encoder
from dnlseg.models.heads import HEAD_INPUTS, ContextHead, FCNHead, HeadOutput

DecodeHeadFactory = Callable[[Sequence[int], int, int, float], nn.Module]  # (stage widths, classes, width, dropout)


class SegmentationOutput(NamedTuple):
    logits: Tensor  # (N, classes, H, W), upsampled to the input size
    aux_logits: Tensor | None  # (N, classes, H, W) from stage 3, or None without an aux head
    side_logits: dict[str, Tensor] = {}  # {name: (N, classes, H, W)}: a head's extra classifiers, in training


@dataclass(frozen=True)
class NetworkOptions:
    """The network's shape (``model.network``): encoder, context head, aux head (docs/science.md section 4).

    Args:
        encoder: the backbone: smp encoder ``name``, ``weights`` file, ``depth``, ``output_stride``.
        head_channels: width of the decode head (512 in the paper; C' = head_channels / reduction).
        context: the context block of the context head, e.g. ``class_path: dnlseg.context.DisentangledNonLocal2d``
            with its ``init_args`` (its ``in_channels`` is ``head_channels``); null for the baseline head.
        decode_head: a head of its own layout instead of the context head, e.g. ``class_path:
            dnlseg.models.heads.DAHead`` with its ``init_args``; it gets ``head_channels`` and ``dropout``. null
            (the default): the context head around ``context``, which must be null otherwise.
        aux_channels: width of the auxiliary FCN head on the stage before the last; 0 turns the aux head off
            (as does ``model.loss.aux_weight: 0``).
        dropout: Dropout2d before each classifier.
        align_corners: of the bilinear upsampling of both heads' logits, in training and evaluation (mmseg's
            769x769 Cityscapes configs: true).
    """

    encoder: EncoderOptions = field(default_factory=EncoderOptions)
    head_channels: int = 512
    context: Callable[[int], nn.Module] | None = None
    decode_head: DecodeHeadFactory | None = None
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
        decode_head: builds a head of its own layout from the encoder's stage widths, ``num_classes``,
            ``head_channels`` and ``dropout`` (``dnlseg.models.heads.base``); None: the context head.
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
        decode_head: DecodeHeadFactory | None = None,
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
        stage_channels = list(cast(Sequence[int], self.encoder.out_channels))  # smp: input, stage 1 .. depth
        stage3_channels, stage4_channels = stage_channels[-2:]
        if decode_head is None:
            self.decode_head: nn.Module = ContextHead(
                in_channels=stage4_channels,
                channels=head_channels,
                num_classes=num_classes,
                context=context,
                dropout=dropout,
            )
        else:
            if context is not None:
                raise ValueError(
                    "model.network.context is the block of the context head; a decode_head has blocks of its own: "
                    "set context: null"
                )
            self.decode_head = decode_head(stage_channels, num_classes, head_channels, dropout)
        self.head_inputs: tuple[str, ...] = tuple(getattr(self.decode_head, "inputs", ("last",)))
        if unknown := [name for name in self.head_inputs if name not in HEAD_INPUTS]:
            raise ValueError(f"{type(self.decode_head).__name__}.inputs {unknown} are not among {HEAD_INPUTS}")
        if "coarse" in self.head_inputs and aux_channels <= 0:
            raise ValueError(
                f"{type(self.decode_head).__name__} refines the aux head's logits: keep model.network.aux_channels "
                "> 0 and model.loss.aux_weight > 0"
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
        features = self.encoder(images)  # [input, stage 1 .. depth]; the last two feed the aux and decode heads
        coarse = None  # the aux head's logits at the feature size: before a head that reads them (OCR's cascade)
        if self.aux_head is not None and "coarse" in self.head_inputs:
            coarse = self.aux_head(features[-2])
        available = {"last": features[-1], "previous": features[-2], "coarse": coarse}
        out = self.decode_head(*(available[name] for name in self.head_inputs))
        if self.aux_head is not None and self.training and coarse is None:  # after the decode head, as mmseg
            coarse = self.aux_head(features[-2])  # (the order of their dropout masks)
        logits, side = (out.logits, out.side) if isinstance(out, HeadOutput) else (out, {})
        aux = self.upsample(coarse, size) if coarse is not None and self.training else None
        side = {name: self.upsample(value, size) for name, value in side.items()}
        return SegmentationOutput(self.upsample(logits, size), aux, side)

    @property
    def side_loss_weights(self) -> dict[str, float]:
        """{name: weight} of the decode head's extra classifiers (``side_logits``); empty for most heads."""
        return dict(getattr(self.decode_head, "side_loss_weights", {}))

    def upsample(self, logits: Tensor, size) -> Tensor:
        """Bilinear resize of logits (N, K, h, w) to ``size`` with the heads' ``align_corners`` (no-op when equal)."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=self.align_corners)
