"""Segmentation models: encoder + heads (plain nn.Modules) and the LightningModule that trains them."""

from dnlseg.models.heads import ContextHead, FCNHead
from dnlseg.models.module import SegmentationModule
from dnlseg.models.network import SegmentationNetwork, SegmentationOutput

__all__ = ["ContextHead", "FCNHead", "SegmentationModule", "SegmentationNetwork", "SegmentationOutput"]
