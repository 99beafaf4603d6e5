"""Tiny datasets written in the exact on-disk formats of Cityscapes, ADE20K, Pascal VOC and an own dataset, for the
tests."""

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


# Synthetic class -> Pascal VOC class id: background, person, car, dog, tvmonitor; 255 (void) stays 255.
VOC_VALUES = np.full(256, 255, dtype=np.uint8)
VOC_VALUES[:5] = (0, 15, 7, 12, 20)
# id -> (H, W): VOC's own lists; "aug" as mmseg's voc_aug.py writes it (SBD ids in neither train nor val).
VOC_SPLITS = {
    "train": {"2007_000032": (48, 64), "2007_000039": (64, 48), "2008_000008": (56, 72)},
    "val": {"2007_000033": (64, 80), "2007_000042": (48, 56)},
    "aug": {"2008_000002": (64, 64), "2008_000003": (48, 64)},
}
VOC_UNLISTED = "2009_000001"  # a detection-only image: in JPEGImages, in no segmentation list


def write_voc(root: Path, aug: bool = True) -> Path:
    """``VOCdevkit/VOC2012`` as the devkit archive unpacks under ``root`` (plus mmseg's SBD aug files with ``aug``).

    JPEGImages/<id>.jpg (RGB JPEG), SegmentationClass/<id>.png (mode P with VOC's palette: 0..20, 255 void),
    ImageSets/Segmentation/{train,val,trainval}.txt; with ``aug``: SegmentationClassAug/<id>.png (mode L, 0..20,
    as voc_aug.py converts SBD's .mat files) for the aug ids only, and aug.txt, trainaug.txt.
    """
    from dnlseg.data.voc import COLORMAP

    base = Path(root) / "VOCdevkit" / "VOC2012"
    lists = base / "ImageSets" / "Segmentation"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug" if aug else None, lists):
        if folder is not None:
            (base / folder).mkdir(parents=True, exist_ok=True)
    palette = np.asarray(COLORMAP, dtype=np.uint8).ravel().tolist()
    splits = VOC_SPLITS if aug else {k: v for k, v in VOC_SPLITS.items() if k != "aug"}
    for index, (split, samples) in enumerate(splits.items()):
        for i, (sample_id, (h, w)) in enumerate(samples.items()):
            sample = generate_sample(2, 10 * index + i, "train", h, w)
            Image.fromarray(sample.image).save(base / "JPEGImages" / f"{sample_id}.jpg", quality=95)
            if split == "aug":  # SBD: no void border
                mask = VOC_VALUES[np.where(sample.mask == 255, 0, sample.mask)]
                Image.fromarray(mask).save(base / "SegmentationClassAug" / f"{sample_id}.png")
            else:
                label = Image.fromarray(VOC_VALUES[sample.mask])
                label.putpalette(palette)  # mode L -> P, the values kept as palette indices
                label.save(base / "SegmentationClass" / f"{sample_id}.png")
        (lists / f"{split}.txt").write_text("".join(f"{sample_id}\n" for sample_id in samples))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for s in ("train", "val") for i in VOC_SPLITS[s]))
    if aug:
        (lists / "trainaug.txt").write_text("".join(f"{i}\n" for s in ("train", "aug") for i in VOC_SPLITS[s]))
    Image.fromarray(generate_sample(2, 99, "train", 40, 40).image).save(base / "JPEGImages" / f"{VOC_UNLISTED}.jpg")
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
