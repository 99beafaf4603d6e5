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
    DEFAULT_CHECKS,
    FilePair,
    FolderDataModule,
    SetupChecks,
    folder_pairs,
    lookup_table,
    read_label,
    resolve_root,
)
from dnlseg.data.loaders import LoaderOptions
from dnlseg.data.transforms import TrainAugmentation
from dnlseg.errors import DatasetLayoutError

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
CITYSCAPES_LOADER = LoaderOptions(batch_size=2, val_batch_size=1)  # 2 x 4 GPUs = the recipes' batch of 8


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """``<city>/<stem><suffix>`` files under ``folder``, by stem."""
    return {p.name[: -len(suffix)]: p for p in sorted(folder.glob(f"*/*{suffix}"))}


def _labels(folder: Path) -> dict[str, Path]:
    """The label files under ``folder`` by stem: labelTrainIds where a sample has it, else labelIds."""
    return _files(folder, LABEL_SUFFIXES["labelIds"]) | _files(folder, LABEL_SUFFIXES["labelTrainIds"])


def label_table(label: Path) -> np.ndarray:
    """The lookup table of a label file: labelTrainIds files as they are, labelIds files mapped."""
    return TRAIN_ID_TABLE if label.name.endswith(LABEL_SUFFIXES["labelTrainIds"]) else LABEL_ID_TABLE


def cityscapes_pairs(root: Path, split: str, labelled: bool = True) -> list[FilePair]:
    """The samples of ``split`` under ``root``; raise ``DatasetLayoutError`` naming what is missing or unpaired."""
    return folder_pairs(
        root / "leftImg8bit" / split,
        root / "gtFine" / split,
        labelled,
        list_images=lambda folder: _files(folder, IMAGE_SUFFIX),
        image_pattern=f"*/*{IMAGE_SUFFIX}",
        list_labels=_labels,
        label_map=label_table,
        what=f"Cityscapes {split} ({root})",
        layout=LAYOUT,
    )


def prepare_cityscapes(
    root: str | Path | None = None, splits: tuple[str, ...] = ("train", "val"), overwrite: bool = False
) -> int:
    """Write ``..._gtFine_labelTrainIds.png`` beside every ``..._gtFine_labelIds.png``; returns the files written.

    Args:
        root: the Cityscapes root; None: ``$CITYSCAPES_ROOT``.
        splits: gtFine splits to convert.
        overwrite: rewrite existing labelTrainIds files.
    """
    root = resolve_root(root, ENV_VAR, "Cityscapes", LAYOUT)
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
        train_split: split to train on.
        val_split: split to validate on.
        test_split: split for ``dnlseg test`` (needs labels: the public test labels are placeholders).
        predict_split: split for ``dnlseg predict`` (``test`` for a benchmark-server submission).
        augmentation: the training augmentation (default: the 512x1024 recipe).
        loader: batch sizes (the recipes: 2 crops x 4 GPUs = 8), workers, ``pin_memory``.
        checks: setup checks; ``label_values`` decodes every label of train + val (~3,500 PNGs).
        seed: seeds shuffling and augmentation; null: the run's ``seed_everything`` seed.
        predict_dir: a folder of images to predict instead of ``predict_split`` (subfolders read; no root needed).
    """

    dataset = "Cityscapes"
    env_var = ENV_VAR
    layout = LAYOUT

    def __init__(
        self,
        root: str | None = None,
        train_split: Split = "train",
        val_split: Split = "val",
        test_split: Split = "val",
        predict_split: Split = "val",
        augmentation: TrainAugmentation = CITYSCAPES_AUGMENTATION,
        loader: LoaderOptions = CITYSCAPES_LOADER,
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
        return cityscapes_pairs(self.dataset_root(), split, labelled)

    def encode_prediction(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> Cityscapes label ids (uint8), as the benchmark server and evaluator read them."""
        return TRAIN_ID_TO_LABEL_ID[train_ids]
