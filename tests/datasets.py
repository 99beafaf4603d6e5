"""Tiny datasets written in the exact on-disk formats of Cityscapes and ADE20K, for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dnlseg.data import generate_sample, write_cityscapes_layout

# Synthetic class -> ADE20K annotation value (0 = "other", ignored): wall, person, tree, car, signboard.
ADE_VALUES = np.full(256, 0, dtype=np.uint8)
ADE_VALUES[:5] = (1, 13, 5, 21, 44)
ADE_SIZES = {"training": [(64, 96), (72, 64), (64, 64), (80, 96)], "validation": [(64, 96), (72, 80)]}


def write_cityscapes(root: Path, num_train: int = 4, num_val: int = 2, label_kinds=("labelIds",)) -> Path:
    """Cityscapes layout, 64x128 PNGs: leftImg8bit/{train,val}/<city>/..., gtFine/... (see write_cityscapes_layout)."""
    return write_cityscapes_layout(root, num_train, num_val, (64, 128), seed=0, label_kinds=label_kinds)


def write_ade20k(root: Path, sizes: dict[str, list[tuple[int, int]]] = ADE_SIZES) -> Path:
    """ADEChallengeData2016/images/<split>/ADE_<split>_<i>.jpg (RGB JPEG) + annotations/<split>/....png (L, 0..150)."""
    base = Path(root) / "ADEChallengeData2016"
    for split, shapes in sizes.items():
        tag = "train" if split == "training" else "val"
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(shapes):
            sample = generate_sample(0, i, "train" if split == "training" else "val", h, w)
            name = f"ADE_{tag}_{i + 1:08d}"
            Image.fromarray(sample.image).save(base / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(ADE_VALUES[sample.mask]).save(base / "annotations" / split / f"{name}.png")
    return Path(root)
