"""Cityscapes (fine annotations): 19 train classes, read in the official on-disk layout.

Layout under ``root`` (the folder that holds ``leftImg8bit/`` and ``gtFine/``)::

    leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   (preferred)
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png        (mapped on the fly)

Labels: a ``labelTrainIds`` file is read as is (0..18, 255 ignore). Where only ``labelIds`` exists, its ids
(0..33) are mapped to train ids with ``cityscapesscripts.helpers.labels`` while loading, so no preprocessing
is needed; ``dnlseg prepare cityscapes --root ...`` writes the ``labelTrainIds`` files once (as
``cityscapesscripts``' ``createTrainIdLabelImgs`` does from the polygons) to skip that lookup.

Predictions are written in ``labelIds`` (``encode_prediction``), the encoding of the benchmark server and of
``cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from dnlseg.data.base import IGNORE_INDEX
from dnlseg.data.folder import (
    DatasetLayoutError,
    FilePair,
    FolderDataModule,
    lookup_table,
    pair_by_stem,
    read_label,
    resolve_root,
)
from dnlseg.data.transforms import TrainAugmentation

log = logging.getLogger(__name__)

ENV_VAR = "CITYSCAPES_ROOT"
NUM_CLASSES = 19
CLASS_NAMES = tuple(trainId2label[t].name for t in range(NUM_CLASSES))
PALETTE = tuple(tuple(trainId2label[t].color) for t in range(NUM_CLASSES))
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIXES = {"labelTrainIds": "_gtFine_labelTrainIds.png", "labelIds": "_gtFine_labelIds.png"}
LAYOUT = """  <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png  (or ..._gtFine_labelIds.png)
  with <split> one of train, val, test"""

# labelTrainIds files: 0..18 and 255.
TRAIN_ID_TABLE = lookup_table({t: t for t in range(NUM_CLASSES)}, ignore_values=(IGNORE_INDEX,))
# labelIds files: every Cityscapes id (0..33) -> its train id; ids not evaluated -> 255.
LABEL_ID_TABLE = lookup_table(
    {
        label.id: label.trainId if 0 <= label.trainId < NUM_CLASSES else IGNORE_INDEX
        for label in CITYSCAPES_LABELS
        if 0 <= label.id < 256
    }
)
# Predictions: train id -> label id (the benchmark's encoding).
TRAIN_ID_TO_LABEL_ID = np.zeros(256, dtype=np.uint8)
TRAIN_ID_TO_LABEL_ID[:NUM_CLASSES] = [trainId2label[t].id for t in range(NUM_CLASSES)]

Split = Literal["train", "val", "test"]

CITYSCAPES_AUGMENTATION = TrainAugmentation(
    crop_size=(512, 1024), scale_range=(0.5, 2.0), scale_base=(2048, 1024), cat_max_ratio=0.75
)


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """``<city>/<stem><suffix>`` files under ``folder``, by stem."""
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*/*{suffix}"))}


def cityscapes_pairs(root: Path, split: str, labelled: bool = True) -> list[FilePair]:
    """The samples of ``split`` under ``root``; raise ``DatasetLayoutError`` naming what is missing or unpaired."""
    if not root.is_dir():
        raise DatasetLayoutError(f"Cityscapes root {root} does not exist or is not a folder; expected:\n{LAYOUT}")
    image_dir = root / "leftImg8bit" / split
    if not image_dir.is_dir():
        raise DatasetLayoutError(f"Cityscapes: no folder {image_dir}; expected:\n{LAYOUT}")
    images = _files(image_dir, IMAGE_SUFFIX)
    if not images:
        raise DatasetLayoutError(
            f"Cityscapes: no images */*{IMAGE_SUFFIX} in {image_dir} (empty split); expected:\n{LAYOUT}"
        )
    if not labelled:
        return [FilePair(name, path) for name, path in images.items()]
    label_dir = root / "gtFine" / split
    if not label_dir.is_dir():
        raise DatasetLayoutError(
            f"Cityscapes: no folder {label_dir} for the labels of {image_dir}; expected:\n{LAYOUT}"
        )
    # labelIds first, so that a labelTrainIds file of the same sample replaces it.
    labels = _files(label_dir, LABEL_SUFFIXES["labelIds"]) | _files(label_dir, LABEL_SUFFIXES["labelTrainIds"])
    what = f"Cityscapes {split} ({root})"
    pairs = pair_by_stem(images, labels, what, LAYOUT)
    return [
        FilePair(
            name,
            image,
            label,
            TRAIN_ID_TABLE if label.name.endswith(LABEL_SUFFIXES["labelTrainIds"]) else LABEL_ID_TABLE,
        )
        for name, image, label in pairs
    ]


def prepare_cityscapes(
    root: str | Path | None = None, splits: tuple[str, ...] = ("train", "val"), overwrite: bool = False
) -> int:
    """Write ``..._gtFine_labelTrainIds.png`` beside every ``..._gtFine_labelIds.png``; returns the files written.

    Args:
        root: the Cityscapes root; None: ``$CITYSCAPES_ROOT``.
        splits: gtFine splits to convert.
        overwrite: rewrite existing labelTrainIds files.
    """
    root = resolve_root(root, ENV_VAR, "Cityscapes")
    if not root.is_dir():
        raise DatasetLayoutError(f"Cityscapes root {root} does not exist or is not a folder; expected:\n{LAYOUT}")
    written = 0
    for split in splits:
        label_dir = root / "gtFine" / split
        if not label_dir.is_dir():
            raise DatasetLayoutError(f"Cityscapes: no folder {label_dir}; expected:\n{LAYOUT}")
        sources = _files(label_dir, LABEL_SUFFIXES["labelIds"])
        if not sources:
            raise DatasetLayoutError(f"Cityscapes: no */*{LABEL_SUFFIXES['labelIds']} files in {label_dir}")
        count = 0
        for stem, source in sources.items():
            target = source.with_name(stem + LABEL_SUFFIXES["labelTrainIds"])
            if target.exists() and not overwrite:
                continue
            Image.fromarray(read_label(source, LABEL_ID_TABLE)).save(target)
            count += 1
        log.info("Cityscapes %s: wrote %d labelTrainIds files under %s", split, count, label_dir)
        written += count
    return written


class CityscapesDataModule(FolderDataModule):
    """Cityscapes fine annotations, 19 classes (module docstring for the layout).

    Items are dicts ``{"image": (3, H, W) float, ImageNet-normalised, "mask": (H, W) int64 train ids or 255,
    "name": "<city>_<seq>_<frame>"}``. Training items are augmented crops; evaluation items are whole images
    at their original resolution (1024x2048), labels included.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``; null: the environment variable
            ``CITYSCAPES_ROOT``.
        augmentation: the training augmentation (default: the 512x1024 recipe).
        batch_size: training crops per batch and device (the recipes: 2 x 4 GPUs = 8).
        val_batch_size: evaluation images per batch.
        num_workers: DataLoader workers per loader.
        pin_memory: DataLoader ``pin_memory``.
        seed: seeds shuffling and augmentation; null: the run's ``seed_everything`` seed.
        train_split: split to train on.
        val_split: split to validate on.
        test_split: split for ``dnlseg test`` (needs labels: the public test labels are placeholders).
        predict_split: split for ``dnlseg predict`` (``test`` for a benchmark-server submission).
        predict_dir: a folder of images to predict instead of ``predict_split`` (subfolders read; no root needed).
        check_label_values: at setup, decode every label and check its values (train + val: ~3,500 PNGs).
        check_threads: threads for the setup checks.
    """

    env_var = ENV_VAR

    def __init__(
        self,
        root: str | None = None,
        augmentation: TrainAugmentation = CITYSCAPES_AUGMENTATION,
        batch_size: int = 2,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        seed: int | None = None,
        train_split: Split = "train",
        val_split: Split = "val",
        test_split: Split = "val",
        predict_split: Split = "val",
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
        self.palette: list[tuple[int, int, int]] = list(PALETTE)
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}

    def find_pairs(self, split: str, labelled: bool) -> list[FilePair]:
        return cityscapes_pairs(resolve_root(self.root, ENV_VAR, "Cityscapes"), split, labelled)

    def describe(self, split: str) -> str:
        return f"Cityscapes {split} ({self.root or '$' + ENV_VAR})"

    def encode_prediction(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> Cityscapes label ids (uint8), as the benchmark server and evaluator read them."""
        return TRAIN_ID_TO_LABEL_ID[train_ids]
