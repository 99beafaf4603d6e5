"""What an exported dnlseg model computes: uint8 RGB images in, logits at the images' size out.

    image  (N, 3, H, W) uint8, RGB, 0..255
    x      = (image / 255 - mean) / std                        the evaluation transform's normalisation (ImageNet)
    logits = upsample(network(x)) (N, K, H, W) float32          bilinear, the network's ``align_corners``

This is ``dnlseg predict``'s whole-image mode at scale 1 (``dnlseg.evaluation.Inference()``): the network in eval
mode (BatchNorm running statistics, no dropout, no auxiliary head). ``argmax`` over K gives the train ids that
``dnlseg predict`` writes, before the dataset's label encoding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ImageSegmenter(nn.Module):
    """uint8 RGB images -> logits at their size (module docstring); the module that is exported.

    Args:
        network: a ``SegmentationNetwork`` (its forward returns ``.logits`` upsampled to the input size).
        mean: per-channel mean of images scaled to [0, 1] (RGB).
        std: per-channel standard deviation of images scaled to [0, 1] (RGB).
    """

    pixel_mean: Tensor  # buffers (1, 3, 1, 1), registered in __init__
    pixel_std: Tensor

    def __init__(self, network: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.network = network
        # (image - 255 mean) / (255 std) == (image / 255 - mean) / std, as albumentations' Normalize computes it
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def forward(self, image: Tensor) -> Tensor:
        """image (N, 3, H, W) uint8 -> logits (N, K, H, W) float32."""
        x = (image.float() - self.pixel_mean) / self.pixel_std
        return self.network(x).logits
