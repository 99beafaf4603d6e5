"""Training augmentation of the recipes (mmsegmentation's pipeline, in albumentations 2.x) and its seeding.

Train pipeline, in order (docs/science.md section 6.1):

1. ``RandomRescale``: scale factor r ~ U(scale_range); the image is resized, keeping its aspect ratio, to
   fit in ``(r * long, r * short)`` of ``scale_base`` (mmseg ``Resize(img_scale, ratio_range)``); without a
   base the factor applies to the image's own size. Cityscapes: base (2048, 1024) = its own size;
   ADE20K: base (2048, 512), i.e. the shorter side goes to ~512 r.
2. ``CategoryBalancedCrop``: a random crop of at most ``crop_size``; with ``cat_max_ratio`` it retries (up to
   10 times) while one class covers more than that share of the crop's labelled pixels (mmseg ``cat_max_ratio``).
3. Horizontal flip (p = 0.5).
4. Photometric distortion (mmseg ``PhotoMetricDistortion``), each with p = 0.5: brightness +-32,
   contrast x[0.5, 1.5] (albumentations scales about the mean), saturation x[0.5, 1.5], hue +-18 (OpenCV units).
5. ImageNet normalisation.
6. Padding to ``crop_size`` at the bottom/right: image 0 (after normalisation, i.e. the mean colour, as
   mmseg pads), label 255.

Seeding. albumentations 2.0.8 draws from generators made when ``Compose`` is built and does not reseed them
per DataLoader worker, so forked workers would repeat each other's augmentations. ``init_worker`` (the
loaders' ``worker_init_fn``) reseeds each worker's copy from the worker seed PyTorch derives from the
loader's generator (seeded by the DataModule's ``seed``) and the rank. ``seed_transform`` gives all
transforms of a pipeline ONE shared stream: ``Compose(seed=...)`` / ``set_random_seed`` would give every
child its own generator with the same seed, so e.g. the flip and the brightness change would make their
first decisions with the same number (both or neither) and run in lockstep after that.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call at import

import random  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.augmentations.crops.transforms import BaseCrop  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_TRIES = 10  # mmseg RandomCrop retries for cat_max_ratio


@dataclass(frozen=True)
class TrainAugmentation:
    """The training augmentation of a recipe.

    Args:
        crop_size: (height, width) of the training crops.
        scale_range: (min, max) of the random rescale factor.
        scale_base: (long side, short side) that scale factor 1 fits the image into, keeping its aspect
            ratio (mmseg ``img_scale``); null: factor 1 is the image's own size.
        cat_max_ratio: retry crops in which one class covers more than this share of the labelled pixels;
            null: a plain random crop.
        flip_prob: probability of a horizontal flip.
        photometric: apply the photometric distortion (brightness, contrast, saturation, hue).
    """

    crop_size: tuple[int, int] = (512, 1024)
    scale_range: tuple[float, float] = (0.5, 2.0)
    scale_base: tuple[int, int] | None = None
    cat_max_ratio: float | None = 0.75
    flip_prob: float = 0.5
    photometric: bool = True

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size={self.crop_size} must be (height, width), both >= 1")
        low, high = self.scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range={self.scale_range} must be (min, max) with 0 < min <= max")
        if self.scale_base is not None and (len(self.scale_base) != 2 or min(self.scale_base) < 1):
            raise ValueError(f"scale_base={self.scale_base} must be (long side, short side) >= 1, or null")
        if self.cat_max_ratio is not None and not 0 < self.cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio={self.cat_max_ratio} must be in (0, 1] or null")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob={self.flip_prob} must be in [0, 1]")


def rescale_size(height: int, width: int, base: tuple[int, int] | None, ratio: float) -> tuple[int, int]:
    """(height, width) after resizing by ``ratio`` relative to ``base`` (long, short), keeping the aspect ratio."""
    if base is None:
        factor = ratio
    else:
        long_side, short_side = base
        factor = min(ratio * long_side / max(height, width), ratio * short_side / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class RandomRescale(A.DualTransform):
    """Resize by a random factor in ``scale_range`` relative to ``scale_base``; bilinear image, nearest label.

    Args:
        scale_range: (min, max) factor, drawn uniformly.
        scale_base: (long side, short side) that factor 1 fits into; None: the image's own size.
        p: probability of applying.
    """

    def __init__(
        self, scale_range: tuple[float, float], scale_base: tuple[int, int] | None = None, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.scale_range = tuple(scale_range)
        self.scale_base = (scale_base[0], scale_base[1]) if scale_base is not None else None

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(*self.scale_range)
        return {"size": rescale_size(height, width, self.scale_base, ratio)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale_range", "scale_base")


class CategoryBalancedCrop(BaseCrop):
    """Random crop of at most (height, width); retries while one class dominates the crop (mmseg ``cat_max_ratio``).

    A crop is accepted when it holds more than one class and no class covers more than ``cat_max_ratio`` of
    its labelled (not ``ignore_index``) pixels; after 10 tries the last one is kept. Images smaller than the
    crop are cropped to their own size (padding comes later in the pipeline).

    Args:
        height: crop height.
        width: crop width.
        cat_max_ratio: the largest share one class may cover; None: accept the first crop.
        ignore_index: label value not counted.
        p: probability of applying.
    """

    def __init__(
        self, height: int, width: int, cat_max_ratio: float | None = 0.75, ignore_index: int = 255, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.height = height
        self.width = width
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _random_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        crop_h, crop_w = min(self.height, height), min(self.width, width)
        y0 = self.py_random.randint(0, height - crop_h)
        x0 = self.py_random.randint(0, width - crop_w)
        return x0, y0, x0 + crop_w, y0 + crop_h

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        box = self._random_box(height, width)
        mask = data.get("mask")
        if self.cat_max_ratio is None or self.cat_max_ratio >= 1 or mask is None:
            return {"crop_coords": box}
        for _ in range(CROP_TRIES - 1):
            x0, y0, x1, y1 = box
            counts = np.bincount(mask[y0:y1, x0:x1].ravel(), minlength=256)
            counts[self.ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
            box = self._random_box(height, width)
        return {"crop_coords": box}

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index")


def photometric_distortion() -> list[A.BasicTransform]:
    """mmseg's ``PhotoMetricDistortion`` in albumentations terms, each step with p = 0.5."""
    return [
        A.RandomBrightnessContrast(brightness_limit=(-32 / 255, 32 / 255), contrast_limit=(0.0, 0.0), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=(0.0, 0.0), contrast_limit=(-0.5, 0.5), p=0.5),
        A.ColorJitter(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(0.5, 1.5), hue=(0.0, 0.0), p=0.5),
        A.HueSaturationValue(hue_shift_limit=(-18, 18), sat_shift_limit=(0, 0), val_shift_limit=(0, 0), p=0.5),
    ]


def train_transform(augmentation: TrainAugmentation, ignore_index: int = 255) -> A.Compose:
    """The training pipeline (module docstring) on ``image`` (H, W, 3) uint8 RGB and ``mask`` (H, W) uint8."""
    aug = augmentation
    crop_h, crop_w = aug.crop_size
    return A.Compose(
        [
            RandomRescale(aug.scale_range, aug.scale_base),
            CategoryBalancedCrop(crop_h, crop_w, aug.cat_max_ratio, ignore_index),
            A.HorizontalFlip(p=aug.flip_prob),
            *(photometric_distortion() if aug.photometric else []),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
            A.PadIfNeeded(
                min_height=crop_h,
                min_width=crop_w,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            ),
        ],
        seed=0,  # a fixed start; seed_transform / init_worker set the real stream
    )


def eval_transform() -> A.Compose:
    """Evaluation and prediction: ImageNet normalisation only; images and labels keep their original size."""
    return A.Compose([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


def unnormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) float RGB in [0, 1] for display (the inverse of ``Normalize``)."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * s + m).clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()


def seed_transform(transform: A.BaseCompose, seed: int) -> None:
    """Give every transform of ``transform`` one shared random stream started from ``seed``."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def worker_seed(base_seed: int, rank: int = 0) -> int:
    """A 32-bit seed from a DataLoader worker's seed and the process rank."""
    return int(np.random.SeedSequence([base_seed % 2**63, rank]).generate_state(1)[0])


def init_worker(worker_id: int, rank: int = 0) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, ``random`` and this worker's copy of the dataset's augmentation.

    The worker's seed is PyTorch's per-worker seed (base seed drawn from the loader's generator, plus the
    worker id), mixed with the rank so that DDP processes draw different augmentations. OpenCV is limited to
    one thread per worker, as PyTorch does for itself: W workers x all-core OpenCV pools would oversubscribe.

    Args:
        worker_id: the worker's index (unused: PyTorch's worker seed already includes it).
        rank: the global rank of this process.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    cv2.setNumThreads(1)
    seed = worker_seed(info.seed, rank)
    np.random.seed(seed)
    random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if isinstance(transform, A.BaseCompose):
        seed_transform(transform, seed)
