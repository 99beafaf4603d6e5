"""What a decode head is to ``SegmentationNetwork`` (docs/science.md sections 4 and 7).

A decode head is an ``nn.Module`` built as ``head(stage_channels, num_classes, channels, dropout)`` --
``stage_channels`` the widths of the encoder's feature maps (smp's ``out_channels``: the input's 3, then stage 1 ..
depth), ``num_classes`` the classifier's outputs, ``channels`` its width (``model.network.head_channels``) and
``dropout`` the Dropout2d before its classifier (``model.network.dropout``) -- with its own options as keyword
arguments after them (what a config's ``init_args`` sets; widths inside the head as ratios of ``channels``). It
declares:

    inputs             which feature maps ``forward`` takes, by keyword and in this order:
                         "last"     the last encoder stage (N, C_4, h, w)
                         "previous" the stage before it (N, C_3, h, w): ANN's low-level map
                         "coarse"   the aux FCN head's logits at the feature size (N, K, h, w): OCR's cascade
    side_loss_weights  {name: weight} of the extra classifiers it trains (DANet's PAM and CAM branches); ``forward``
                       then returns ``HeadOutput(logits, {name: logits})`` in training, and each side output gets
                       its own loss, weighted, beside the main one (``SegmentationModule.losses``)
    mmseg_names        {our submodule: mmseg's} where the head's layers are named otherwise than in the mmseg head it
                       mirrors ("" when mmseg has no module at that level); the blocks inside carry their own

and returns logits (N, K, h, w) at the feature size (the network upsamples them).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

from torch import Tensor, nn

HEAD_INPUTS = ("last", "previous", "coarse")


class HeadOutput(NamedTuple):
    logits: Tensor  # (N, K, h, w): the head's prediction
    side: dict[str, Tensor]  # {name: (N, K, h, w)}: extra classifiers trained with their own loss (training only)


class DecodeHead(nn.Module):
    """The base of the decode heads that are not ``ContextHead`` (module docstring: what a head declares)."""

    inputs: ClassVar[tuple[str, ...]] = ("last",)
    side_loss_weights: dict[str, float] = {}
    mmseg_names: ClassVar[dict[str, str]] = {}
