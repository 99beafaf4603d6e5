"""Tiny datasets written in the exact on-disk formats of Cityscapes, ADE20K and an own dataset, for the tests."""

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


# Own data: the synthetic classes as mask values 0, 1, 2, 3 and 7 (yellow has an explicit `value`), 255 unlabelled.
OWN_CLASSES = [
    {"name": "background", "color": [0, 0, 0]},
    {"name": "red", "color": [220, 20, 60]},
    {"name": "green", "color": [107, 142, 35]},
    {"name": "blue", "color": [0, 0, 142]},
    {"name": "yellow", "color": [250, 170, 30], "value": 7},
]
OWN_VALUES = np.full(256, 255, dtype=np.uint8)
OWN_VALUES[:5] = (0, 1, 2, 3, 7)
OWN_SIZES = {"train": [(64, 64), (64, 96), (72, 64), (64, 64)], "val": [(64, 80), (48, 64)]}


def write_image_mask(root: Path, sizes: dict[str, list[tuple[int, int]]] = OWN_SIZES) -> Path:
    """An own dataset for ImageMaskDataModule: images/<split>/..., masks/<split>/... (mode L) and classes.yaml.

    The second image of each split lies in a subfolder (``site_b/``) and training images alternate PNG and JPEG.
    """
    import yaml

    root = Path(root)
    for split, shapes in sizes.items():
        for i, (h, w) in enumerate(shapes):
            sample = generate_sample(1, i, "train" if split == "train" else "val", h, w)
            name = f"site_b/{i:04d}" if i == 1 else f"{i:04d}"
            suffix = ".jpg" if split == "train" and i % 2 else ".png"
            for folder, array, ext in (("images", sample.image, suffix), ("masks", OWN_VALUES[sample.mask], ".png")):
                path = root / folder / split / f"{name}{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
    (root / "classes.yaml").write_text(yaml.safe_dump(OWN_CLASSES))
    return root


def write_image_folder(root: Path) -> dict[str, tuple[int, int]]:
    """A folder of images to predict: RGB JPEG, grey PNG, RGBA PNG in a subfolder, odd sizes. {name: (H, W)}."""
    rng = np.random.default_rng(0)
    images = {"photo": ((50, 70, 3), ".jpg"), "grey": ((33, 41), ".png"), "sub/rgba": ((40, 36, 4), ".png")}
    for name, (shape, suffix) in images.items():
        path = Path(root) / f"{name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return {name: shape[:2] for name, (shape, _) in images.items()}
