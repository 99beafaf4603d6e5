"""DANet's dual attention head (Fu et al., CVPR 2019, arXiv 1809.02983, Sec. 3), docs/science.md section 7.

Two branches on the last stage's map x, each 3x3 conv, attention block, 3x3 conv, and a classifier on their sum:

    f_p = conv_p'(PAM(conv_p(x)))          (N, C, h, w)  position attention over every pixel
    f_c = conv_c'(CAM(conv_c(x)))          (N, C, h, w)  channel attention
    logits = W_seg dropout(f_p + f_c)      (N, K, h, w)
    side   = W_pam dropout(f_p), W_cam dropout(f_c)     trained with a loss each (DANet's deep supervision)

mmseg 1.2.2's ``DAHead`` layer for layer (its names: ``pam_in_conv``, ``pam``, ``pam_out_conv``, ``pam_conv_seg``,
the same for ``cam``, ``conv_seg``; one Dropout2d before each classifier), its losses ``pam_cam``, ``pam`` and
``cam`` (weight 1 each in its Cityscapes configs) and its prediction: the ``pam_cam`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dnlseg.context.channel_attention import ChannelAttention2d
from dnlseg.context.layers import ConvNormAct
from dnlseg.context.non_local_base import AttentionPath
from dnlseg.context.position_attention import PositionAttention2d
from dnlseg.models.heads.base import DecodeHead, HeadOutput


class DAHead(DecodeHead):
    """DANet's head, last stage (N, C_in, h, w) -> logits (N, K, h, w) (module docstring).

    Args:
        stage_channels: the encoder's feature widths; the head reads the last.
        num_classes: K, classifier outputs.
        channels: C, the width of both branches (``model.network.head_channels``; mmseg: 512).
        dropout: Dropout2d probability before each classifier (``model.network.dropout``).
        pam_reduction: PAM's query/key channels are C // pam_reduction (mmseg: ``pam_channels`` 64 of 512).
        side_loss_weight: the weight of each branch's own loss (mmseg: 1).
        attention: PAM's attention path, "fused" (O(P) memory) or "materialized" (the P x P map).
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        dropout: float = 0.1,
        *,
        pam_reduction: int = 8,
        side_loss_weight: float = 1.0,
        attention: AttentionPath = "fused",
    ) -> None:
        super().__init__()
        in_channels = stage_channels[-1]
        self.side_loss_weights = {"pam": side_loss_weight, "cam": side_loss_weight}
        self.pam_in_conv = ConvNormAct(in_channels, channels, nn.BatchNorm2d, kernel_size=3)
        self.pam = PositionAttention2d(channels, reduction=pam_reduction, attention=attention)
        self.pam_out_conv = ConvNormAct(channels, channels, nn.BatchNorm2d, kernel_size=3)
        self.pam_conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.cam_in_conv = ConvNormAct(in_channels, channels, nn.BatchNorm2d, kernel_size=3)
        self.cam = ChannelAttention2d(channels)
        self.cam_out_conv = ConvNormAct(channels, channels, nn.BatchNorm2d, kernel_size=3)
        self.cam_conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, last: Tensor) -> Tensor | HeadOutput:
        pam = self.pam_out_conv(self.pam(self.pam_in_conv(last)))  # (N, C, h, w)
        side = {"pam": self.pam_conv_seg(self.dropout(pam))} if self.training else {}  # mmseg's order of dropouts
        cam = self.cam_out_conv(self.cam(self.cam_in_conv(last)))  # (N, C, h, w)
        if self.training:
            side["cam"] = self.cam_conv_seg(self.dropout(cam))
        logits = self.conv_seg(self.dropout(pam + cam))  # (N, K, h, w)
        return HeadOutput(logits, side) if self.training else logits
