"""How a network is run on a full evaluation image: whole, sliding window, and multi-scale + flip.

The recipes (docs/science.md section 4) evaluate at the original label resolution:

- whole image: the network sees the whole (1024x2048) image; logits are upsampled to the label size.
- slide: windows of ``crop_size`` every ``stride`` (769/513), the last window of a row/column flush with the
  border; overlapping logits are averaged (mmseg ``slide_inference``).
- multi-scale (+ flip): the image is resized by each of ``scales`` (0.5-1.75) -- and flipped, with ``flip`` --,
  run whole or sliding, and the softmax probabilities of all views, each resized to the label size, are
  averaged (mmseg ``aug_test``).

Scale 1 is the image's own size, or with ``base_size = (long, short)`` the size that fits the image into that
box keeping its aspect ratio (mmseg's test ``img_scale``: ADE20K's (2048, 512) puts the short side at 512).

Shapes: N images, K classes, (H, W) the input size, (h, w) a view's size, ``size`` the output size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from dnlseg.data.transforms import rescale_size


def resize(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (N, C, h, w) to ``size`` (no-op when equal)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def slide_windows(
    height: int, width: int, crop: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) windows of at most ``crop`` every ``stride``, the last one flush with the border (mmseg)."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * stride_h + crop_h, height), min(c * stride_w + crop_w, width)
            windows.append((max(y1 - crop_h, 0), y1, max(x1 - crop_w, 0), x1))
    return windows


@dataclass(frozen=True)
class Inference:
    """How the network sees an evaluation image (module docstring).

    Args:
        mode: "whole": the network sees each (rescaled) image at once; "slide": windows of ``crop_size`` every
            ``stride``, overlapping logits averaged.
        crop_size: (height, width) of the sliding windows (mode "slide").
        stride: (height, width) step between windows (mode "slide").
        scales: scale factors of the image; more than one (or ``flip``) averages the softmax over the views.
        flip: add a horizontally flipped view at every scale.
        base_size: (long side, short side) that scale 1 fits the image into, keeping its aspect ratio;
            null: scale 1 is the image's own size.
    """

    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    base_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"inference mode={self.mode!r} must be 'whole' or 'slide'")
        if self.mode == "slide":
            for name in ("crop_size", "stride"):
                value = getattr(self, name)
                if value is None or len(value) != 2 or min(value) < 1:
                    raise ValueError(f"inference mode 'slide' needs {name}: [height, width], both >= 1; got {value}")
        if not self.scales or min(self.scales) <= 0:
            raise ValueError(f"inference scales={self.scales} must be a non-empty list of positive factors")
        if self.base_size is not None and (len(self.base_size) != 2 or min(self.base_size) < 1):
            raise ValueError(f"inference base_size={self.base_size} must be (long side, short side) or null")

    @property
    def views(self) -> int:
        """Number of network views averaged per image."""
        return len(self.scales) * (2 if self.flip else 1)

    def __call__(
        self,
        model: Callable[[Tensor], Tensor],
        images: Tensor,
        size: Sequence[int] | None = None,
        align_corners: bool = False,
    ) -> Tensor:
        """Scores (N, K, *size) of ``images`` (N, 3, H, W); ``size`` defaults to (H, W).

        One view: the network's logits, resized. Several views: log of the mean softmax over the views, so
        argmax and cross-entropy both read it as they read logits. ``align_corners`` is the network's, for the
        resizing of logits (mmseg resizes them with its heads' setting; images are resized with False).
        """
        H, W = images.shape[-2:]
        size = (H, W) if size is None else tuple(size)
        if self.views == 1:
            return resize(self._run(model, self._rescale(images, self.scales[0])), size, align_corners)
        probs: Tensor | None = None
        for scale in self.scales:
            scaled = self._rescale(images, scale)
            for flipped in (False, True) if self.flip else (False,):
                x = scaled.flip(-1) if flipped else scaled
                logits = self._run(model, x)  # (N, K, h, w)
                if flipped:
                    logits = logits.flip(-1)
                p = resize(logits, size, align_corners).float().softmax(dim=1)  # (N, K, *size)
                probs = p if probs is None else probs.add_(p)
        assert probs is not None  # views > 1
        return probs.div_(self.views).clamp_min_(1e-12).log_()

    def _rescale(self, images: Tensor, scale: float) -> Tensor:
        H, W = images.shape[-2:]
        return resize(images, rescale_size(H, W, self.base_size, scale))

    def _run(self, model: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
        """Logits (N, K, h, w) of one view (N, 3, h, w), whole or by sliding windows."""
        if self.mode == "whole":
            return model(images)
        N, _, h, w = images.shape
        assert self.crop_size is not None and self.stride is not None  # mode "slide" (__post_init__)
        logits: Tensor | None = None
        count: Tensor | None = None
        for y0, y1, x0, x1 in slide_windows(h, w, self.crop_size, self.stride):
            window = model(images[:, :, y0:y1, x0:x1])  # (N, K, y1 - y0, x1 - x0)
            if logits is None or count is None:
                logits = window.new_zeros(N, window.shape[1], h, w)
                count = window.new_zeros(1, 1, h, w)
            logits[:, :, y0:y1, x0:x1] += window
            count[:, :, y0:y1, x0:x1] += 1
        assert logits is not None and count is not None  # at least one window
        return logits / count
