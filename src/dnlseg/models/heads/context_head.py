"""The decode heads of docs/science.md section 4: the context head around one block (NL, DNL, GC, CC, none) and the
auxiliary FCN head."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.checkpoints.mmseg import CONTEXT_HEAD_NAMES, FCN_HEAD_NAMES


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ContextHead(nn.Module):
    """3x3 conv C_in -> C, context block, 3x3 conv C -> C, concat with the input, 3x3 conv -> C, dropout, classifier.

    Args:
        in_channels: channels of the last encoder stage (2048 for ResNet-50/101).
        channels: C, the head width the context block works at (512 in the paper).
        num_classes: classifier outputs.
        context: builds the context block from C, e.g. ``partial(DisentangledNonLocal2d, temperature=0.05)``;
            None: the baseline head, identical but without a block.
        dropout: Dropout2d probability before the classifier.

    mmseg 1.2.2's ``NLHead``, ``DNLHead``, ``GCHead``, ``CCHead`` and ``FCNHead`` (2 convs, ``concat_input``) share
    this layout; the network builds it from ``model.network.head_channels`` and ``context`` unless a config names a
    ``decode_head`` of its own (``dnlseg.models.heads.base``: what a head declares). Its ``mmseg_names`` are those of
    that layout, ``context`` named as the block says mmseg's head holds it (its ``mmseg_attribute``: ``nl_block``,
    ``dnl_block``, ``gc_block``, ``cca``).
    """

    inputs: ClassVar[tuple[str, ...]] = ("last",)
    MMSEG_LAYOUT: ClassVar[dict[str, str]] = CONTEXT_HEAD_NAMES  # one table with the checkpoint rules (HEAD_KEYS)

    def __init__(
        self,
        *,
        in_channels: int,
        channels: int,
        num_classes: int,
        context: Callable[[int], nn.Module] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.conv_in = conv_bn_relu(in_channels, channels)
        self.context = context(channels) if context is not None else nn.Identity()
        self.conv_out = conv_bn_relu(channels, channels)
        self.fuse = conv_bn_relu(in_channels + channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        attribute = getattr(self.context, "mmseg_attribute", None)
        self.mmseg_names = {**self.MMSEG_LAYOUT, **({"context": attribute} if attribute else {})}

    def forward(self, features: Tensor) -> Tensor:
        """(N, C_in, h, w) -> logits (N, classes, h, w)."""
        y = self.conv_out(self.context(self.conv_in(features)))  # (N, C, h, w)
        y = self.fuse(torch.cat([features, y], dim=1))  # (N, C_in + C, h, w) -> (N, C, h, w)
        return self.classifier(self.dropout(y))


class FCNHead(nn.Module):
    """Auxiliary head on stage 3: 3x3 conv C_in -> C + BN + ReLU, Dropout2d, 1x1 conv to classes (mmseg's
    ``FCNHead(num_convs=1, concat_input=False)``: its ``auxiliary_head``, or OCR's ``decode_head.0``)."""

    mmseg_names: ClassVar[dict[str, str]] = FCN_HEAD_NAMES

    def __init__(self, *, in_channels: int, channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.conv(features)))
