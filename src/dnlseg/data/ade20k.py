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

from dnlseg.data.folder import (
    DEFAULT_CHECKS,
    FilePair,
    FolderDataModule,
    SetupChecks,
    dataset_folder,
    folder_pairs,
    lookup_table,
)
from dnlseg.data.loaders import LoaderOptions
from dnlseg.data.transforms import TrainAugmentation
from dnlseg.data.voc import voc_colormap

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


# The annotation files carry no palette: Pascal VOC's colour map for the values 1..150 (as mmseg's ADE20KDataset).
PALETTE = voc_colormap(NUM_CLASSES + 1)[1:]
# Annotation value -> train id: 0 ("other") -> ignored, k -> k - 1 (reduce_zero_label); > 150 invalid.
LABEL_TABLE = lookup_table({k: k - 1 for k in range(1, NUM_CLASSES + 1)}, ignore_values=(0,))

Split = Literal["training", "validation"]

ADE20K_AUGMENTATION = TrainAugmentation(
    crop_size=(512, 512), scale_range=(0.5, 2.0), scale_base=(2048, 512), cat_max_ratio=0.75
)
ADE20K_LOADER = LoaderOptions(batch_size=4, val_batch_size=1)  # 4 x 4 GPUs = the recipes' 16; sizes differ: 1


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def ade20k_pairs(root: Path, split: str, labelled: bool = True) -> list[FilePair]:
    """The samples of ``split``; raise ``DatasetLayoutError`` naming what is missing or unpaired."""
    base = dataset_folder(root, (FOLDER,), "images", "ADE20K", LAYOUT)
    return folder_pairs(
        base / "images" / split,
        base / "annotations" / split,
        labelled,
        list_images=_images,
        image_pattern="*.jpg",
        list_labels=lambda folder: {p.stem: p for p in sorted(folder.glob("*.png"))},
        label_map=LABEL_TABLE,
        what=f"ADE20K {split} ({root})",
        layout=LAYOUT,
    )


class ADE20KDataModule(FolderDataModule):
    """ADE20K SceneParsing, 150 classes, label 0 ignored (module docstring for the layout).

    Items are dicts ``{"image": (3, H, W) float, ImageNet-normalised, "mask": (H, W) int64 train ids 0..149 or
    255, "name": "ADE_val_00000001"}``. Training items are augmented 512x512 crops; evaluation items are whole
    images at their original resolution (sizes differ: ``loader.val_batch_size`` 1).

    Args:
        root: the folder holding ``ADEChallengeData2016/`` (or that folder); null: the environment variable
            ``ADE20K_ROOT``.
        train_split: split to train on.
        val_split: split to validate on.
        test_split: split for ``dnlseg test``.
        predict_split: split for ``dnlseg predict`` when ``predict_dir`` is null.
        augmentation: the training augmentation (default: the 512x512 recipe, short side ~512 at scale 1).
        loader: batch sizes (the recipes: 4 crops x 4 GPUs = 16), workers, ``pin_memory``.
        checks: setup checks; ``label_values`` decodes every label of train + val (~22,000 PNGs).
        seed: seeds shuffling and augmentation; null: the run's ``seed_everything`` seed.
        predict_dir: a folder of images to predict instead (subfolders read; no root needed), e.g.
            ``release_test/testing`` of the test release.
    """

    dataset = "ADE20K"
    env_var = ENV_VAR
    layout = LAYOUT

    def __init__(
        self,
        root: str | None = None,
        train_split: Split = "training",
        val_split: Split = "validation",
        test_split: Split = "validation",
        predict_split: Split = "validation",
        augmentation: TrainAugmentation = ADE20K_AUGMENTATION,
        loader: LoaderOptions = ADE20K_LOADER,
        checks: SetupChecks = DEFAULT_CHECKS,
        seed: int | None = None,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__(
            root=root, augmentation=augmentation, loader=loader, checks=checks, seed=seed, predict_dir=predict_dir
        )
        self.save_hyperparameters()
        self.num_classes: int = NUM_CLASSES
        self.class_names: list[str] = list(CLASS_NAMES)
        self.palette: list[tuple[int, int, int]] = list(PALETTE)
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}

    def find_pairs(self, split: str, labelled: bool) -> list[FilePair]:
        return ade20k_pairs(self.dataset_root(), split, labelled)

    def encode_prediction(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids 0..149 -> ADE20K label values 1..150 (uint8)."""
        return (train_ids.astype(np.int64) + 1).astype(np.uint8)
