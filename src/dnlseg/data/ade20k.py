"""ADE20K (the SceneParsing / ADEChallengeData2016 release): 150 classes, read in its on-disk layout.

Layout under ``root`` (the folder holding ``ADEChallengeData2016/``, or that folder itself)::

    ADEChallengeData2016/images/{training,validation}/ADE_<split>_<index>.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_<split>_<index>.png   (single channel, 0..150)

Label 0 ("other objects") is ignored and 1..150 become train ids 0..149 (mmseg's ``reduce_zero_label``).
Predictions are written back as 1..150 (``encode_prediction``), the encoding of the benchmark and of the
annotation files. Class names: ``objectInfo150``, in the order of mmsegmentation's ``ADE20KDataset.CLASSES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from dnlseg.data.base import IGNORE_INDEX
from dnlseg.data.folder import (
    DatasetLayoutError,
    FilePair,
    FolderDataModule,
    lookup_table,
    pair_by_stem,
    resolve_root,
)
from dnlseg.data.transforms import TrainAugmentation

ENV_VAR = "ADE20K_ROOT"
FOLDER = "ADEChallengeData2016"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = """  <root>/ADEChallengeData2016/images/<split>/<name>.jpg
  <root>/ADEChallengeData2016/annotations/<split>/<name>.png   (single channel, values 0..150)
  with <split> one of training, validation (root may also be the ADEChallengeData2016 folder itself)"""

CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)  # 150


def bit_interleaved_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for values 1..count: the PASCAL VOC colour map (bits of the value spread over R, G, B).

    The ADE20K annotation files carry no palette, so visualisations use this standard one.
    """
    colours = []
    for value in range(1, count + 1):
        r = g = b = 0
        for shift in range(8):
            r |= ((value >> (3 * shift)) & 1) << (7 - shift)
            g |= ((value >> (3 * shift + 1)) & 1) << (7 - shift)
            b |= ((value >> (3 * shift + 2)) & 1) << (7 - shift)
        colours.append((r, g, b))
    return tuple(colours)


PALETTE = bit_interleaved_palette(NUM_CLASSES)
# Annotation value -> train id: 0 ("other") -> ignored, k -> k - 1 (reduce_zero_label); > 150 invalid.
LABEL_TABLE = lookup_table({k: k - 1 for k in range(1, NUM_CLASSES + 1)}, ignore_values=(0,))

Split = Literal["training", "validation"]

ADE20K_AUGMENTATION = TrainAugmentation(
    crop_size=(512, 512), scale_range=(0.5, 2.0), scale_base=(2048, 512), cat_max_ratio=0.75
)


def dataset_folder(root: Path) -> Path:
    """``root/ADEChallengeData2016`` if it exists, else ``root`` when it has the layout itself."""
    if not root.is_dir():
        raise DatasetLayoutError(f"ADE20K root {root} does not exist or is not a folder; expected:\n{LAYOUT}")
    if (root / FOLDER).is_dir():
        return root / FOLDER
    if (root / "images").is_dir():
        return root
    raise DatasetLayoutError(f"ADE20K: neither {root / FOLDER} nor {root / 'images'} exists; expected:\n{LAYOUT}")


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def ade20k_pairs(root: Path, split: str, labelled: bool = True) -> list[FilePair]:
    """The samples of ``split``; raise ``DatasetLayoutError`` naming what is missing or unpaired."""
    base = dataset_folder(root)
    image_dir = base / "images" / split
    if not image_dir.is_dir():
        raise DatasetLayoutError(f"ADE20K: no folder {image_dir}; expected:\n{LAYOUT}")
    images = _images(image_dir)
    if not images:
        raise DatasetLayoutError(f"ADE20K: no .jpg images in {image_dir} (empty split); expected:\n{LAYOUT}")
    if not labelled:
        return [FilePair(name, path) for name, path in images.items()]
    label_dir = base / "annotations" / split
    if not label_dir.is_dir():
        raise DatasetLayoutError(f"ADE20K: no folder {label_dir} for the labels of {image_dir}; expected:\n{LAYOUT}")
    labels = {p.stem: p for p in sorted(label_dir.glob("*.png"))}
    pairs = pair_by_stem(images, labels, f"ADE20K {split} ({root})", LAYOUT)
    return [FilePair(name, image, label, LABEL_TABLE) for name, image, label in pairs]


class ADE20KDataModule(FolderDataModule):
    """ADE20K SceneParsing, 150 classes, label 0 ignored (module docstring for the layout).

    Items are dicts ``{"image": (3, H, W) float, ImageNet-normalised, "mask": (H, W) int64 train ids 0..149 or
    255, "name": "ADE_val_00000001"}``. Training items are augmented 512x512 crops; evaluation items are whole
    images at their original resolution (sizes differ: ``val_batch_size`` 1).

    Args:
        root: the folder holding ``ADEChallengeData2016/`` (or that folder); null: the environment variable
            ``ADE20K_ROOT``.
        augmentation: the training augmentation (default: the 512x512 recipe, short side ~512 at scale 1).
        batch_size: training crops per batch and device (the recipes: 4 x 4 GPUs = 16).
        val_batch_size: evaluation images per batch (1: the images differ in size).
        num_workers: DataLoader workers per loader.
        pin_memory: DataLoader ``pin_memory``.
        seed: seeds shuffling and augmentation; null: the run's ``seed_everything`` seed.
        train_split: split to train on.
        val_split: split to validate on.
        test_split: split for ``dnlseg test``.
        predict_split: split for ``dnlseg predict`` when ``predict_dir`` is null.
        predict_dir: a folder of images to predict instead (subfolders read; no root needed), e.g.
            ``release_test/testing`` of the test release.
        check_label_values: at setup, decode every label and check its values (train + val: ~22,000 PNGs).
        check_threads: threads for the setup checks.
    """

    env_var = ENV_VAR

    def __init__(
        self,
        root: str | None = None,
        augmentation: TrainAugmentation = ADE20K_AUGMENTATION,
        batch_size: int = 4,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        seed: int | None = None,
        train_split: Split = "training",
        val_split: Split = "validation",
        test_split: Split = "validation",
        predict_split: Split = "validation",
        predict_dir: str | None = None,
        check_label_values: bool = True,
        check_threads: int = 8,
    ) -> None:
        super().__init__(
            augmentation,
            batch_size,
            val_batch_size,
            num_workers,
            pin_memory,
            seed,
            check_label_values,
            check_threads,
            predict_dir,
        )
        self.save_hyperparameters()
        self.root = root
        self.num_classes: int = NUM_CLASSES
        self.class_names: list[str] = list(CLASS_NAMES)
        self.ignore_index: int = IGNORE_INDEX
        self.palette: list[tuple[int, int, int]] = list(PALETTE)
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}

    def find_pairs(self, split: str, labelled: bool) -> list[FilePair]:
        return ade20k_pairs(resolve_root(self.root, ENV_VAR, "ADE20K"), split, labelled)

    def describe(self, split: str) -> str:
        return f"ADE20K {split} ({self.root or '$' + ENV_VAR})"

    def encode_prediction(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids 0..149 -> ADE20K label values 1..150 (uint8)."""
        return (train_ids.astype(np.int64) + 1).astype(np.uint8)
