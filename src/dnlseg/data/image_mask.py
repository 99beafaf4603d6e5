"""Your own dataset: a folder of images, a folder of label masks with the same names, and a list of classes.

Layout under ``root``::

    images/<split>/<name>.png|.jpg|.jpeg     RGB (grey and RGBA are read as RGB); subfolders are read
    masks/<split>/<name>.png                 single channel (mode L or P), one value per pixel
    classes.yaml                             the class list, unless ``classes`` is given in the config

with ``<split>`` e.g. ``train`` and ``val`` (the DataModule's ``*_split`` arguments), and ``<name>`` the path
below ``images/<split>`` without the suffix (``site_a/0001``). The class list, in ``classes.yaml`` or inline::

    - {name: background, color: [0, 0, 0]}
    - {name: road, color: [128, 64, 128]}
    - {name: car, color: [0, 0, 142], value: 7}    # value: the class's value in the masks (default: its index)

Mask values are the classes' ``value``s (0, 1, 2, ... in list order by default) or ``ignore_value`` (255 by
default: no loss, no metric); any other value is an error naming the file. Train ids are the list positions.
Everything else is as for Cityscapes and ADE20K (``folder.py``): the same checks at setup (layout, pairing,
sizes, values), the same augmentation (``augmentation``), evaluation at full resolution, and predictions
written as mask values (``encode_prediction``) with the classes' colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dnlseg.data.base import IGNORE_INDEX
from dnlseg.data.folder import (
    IMAGE_SUFFIXES,
    DatasetLayoutError,
    FilePair,
    FolderDataModule,
    lookup_table,
    pair_by_stem,
)
from dnlseg.data.transforms import TrainAugmentation
from dnlseg.errors import yaml_problem

CLASSES_FILE = "classes.yaml"
LAYOUT = """  <root>/images/<split>/<name>.png|.jpg|.jpeg
  <root>/masks/<split>/<name>.png   (single channel: the classes' values, or ignore_value)
  <root>/classes.yaml               (a list of {name, color: [r, g, b], value (optional)}, unless `classes` is set)"""

OWN_AUGMENTATION = TrainAugmentation(crop_size=(512, 512), scale_range=(0.5, 2.0), scale_base=None)


@dataclass(frozen=True)
class SegmentationClass:
    """One class of an own dataset.

    Args:
        name: the class name (per-class IoU logs, figure legends).
        color: (r, g, b), 0..255: colour PNGs, overlays, legends.
        value: the class's value in the mask files; null: its position in the list.
    """

    name: str
    color: tuple[int, int, int]
    value: int | None = None


def read_classes(path: Path) -> list[SegmentationClass]:
    """The class list of a ``classes.yaml`` (module docstring); raise ``DatasetLayoutError`` naming the file."""
    if not path.is_file():
        raise DatasetLayoutError(
            f"no class list {path}: write one, or give `classes` in the config; expected:\n{LAYOUT}"
        )
    try:
        entries = yaml.safe_load(path.read_text())
        return [SegmentationClass(e["name"], tuple(e["color"]), e.get("value")) for e in entries]
    except (yaml.YAMLError, TypeError, KeyError, AttributeError) as error:
        raise DatasetLayoutError(
            f"class list {path}: expected a YAML list of {{name: ..., color: [r, g, b], value: (optional)}} "
            f"({yaml_problem(error)})"
        ) from error


def check_classes(classes: Sequence[SegmentationClass], ignore_value: int, where: str) -> list[int]:
    """The mask value of every class; raise ``DatasetLayoutError`` for an unusable class list."""
    if not classes:
        raise DatasetLayoutError(f"{where}: the class list is empty")
    names = [c.name for c in classes]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise DatasetLayoutError(f"{where}: class names must be distinct, non-empty strings; got {names}")
    for c in classes:
        if len(c.color) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in c.color):
            raise DatasetLayoutError(
                f"{where}: class {c.name!r} has color {list(c.color)}; expected [r, g, b] in 0..255"
            )
    values = [c.value if c.value is not None else i for i, c in enumerate(classes)]
    if len(set(values)) != len(values) or not all(isinstance(v, int) and 0 <= v <= 255 for v in values):
        raise DatasetLayoutError(f"{where}: mask values must be distinct integers in 0..255; got {values}")
    if ignore_value in values:
        raise DatasetLayoutError(f"{where}: ignore_value={ignore_value} is also the value of a class ({values})")
    return values


def files_below(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Files under ``folder`` (subfolders too) by their path below it without suffix."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in files}


class ImageMaskDataModule(FolderDataModule):
    """Your own dataset: ``images/<split>/`` and ``masks/<split>/`` with matching names, and a class list.

    Items are dicts ``{"image": (3, H, W) float, ImageNet-normalised, "mask": (H, W) int64 train ids or 255,
    "name": str}``. Training items are augmented crops; evaluation items are whole images at their own size.

    Args:
        root: the dataset folder (module docstring for the layout); only ``predict`` with ``predict_dir`` and
            inline ``classes`` runs without it.
        classes: the class list (name, color, optional mask value); null: read ``<root>/classes.yaml``.
        ignore_value: the mask value of unlabelled pixels (no loss, no metric).
        augmentation: the training augmentation (default: 512x512 crops, rescale 0.5-2.0 of the image's own size).
        batch_size: training crops per batch and device.
        val_batch_size: evaluation images per batch (1 unless all images have one size).
        num_workers: DataLoader workers per loader.
        pin_memory: DataLoader ``pin_memory``.
        seed: seeds shuffling and augmentation; null: the run's ``seed_everything`` seed.
        train_split: folder name of the training split.
        val_split: folder name of the validation split.
        test_split: folder name of the split for ``dnlseg test``.
        predict_split: folder name of the split for ``dnlseg predict`` when ``predict_dir`` is null.
        predict_dir: a folder of images to predict instead (subfolders read; no root needed).
        check_label_values: at setup, decode every mask and check its values.
        check_threads: threads for the setup checks.
    """

    def __init__(
        self,
        root: str | None = None,
        classes: list[SegmentationClass] | None = None,
        ignore_value: int = IGNORE_INDEX,
        augmentation: TrainAugmentation = OWN_AUGMENTATION,
        batch_size: int = 4,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        seed: int | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_split: str = "val",
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
        self.root = Path(root).expanduser() if root is not None else None
        if classes is None:
            if self.root is None:
                raise DatasetLayoutError("ImageMaskDataModule needs `root` (with root/classes.yaml) or `classes`")
            where = str(self.root / CLASSES_FILE)
            classes = read_classes(self.root / CLASSES_FILE)
        else:
            where = "data.init_args.classes"
            classes = [SegmentationClass(**c) if isinstance(c, dict) else c for c in classes]
        values = check_classes(classes, ignore_value, where)
        self.num_classes: int = len(classes)
        self.class_names: list[str] = [c.name for c in classes]
        self.palette: list[tuple[int, int, int]] = [tuple(c.color) for c in classes]
        self.mask_values = np.asarray(values, dtype=np.uint8)  # train id -> mask value
        self.label_table = lookup_table(
            dict(zip(values, range(len(values)), strict=True)), ignore_values=[ignore_value]
        )
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}

    def find_pairs(self, split: str, labelled: bool) -> list[FilePair]:
        if self.root is None or not self.root.is_dir():
            raise DatasetLayoutError(f"dataset root {self.root} does not exist or is not a folder; expected:\n{LAYOUT}")
        image_dir = self.root / "images" / split
        if not image_dir.is_dir():
            raise DatasetLayoutError(f"no folder {image_dir}; expected:\n{LAYOUT}")
        images = files_below(image_dir, IMAGE_SUFFIXES)
        if not images:
            raise DatasetLayoutError(f"no images in {image_dir} (empty split); expected:\n{LAYOUT}")
        if not labelled:
            return [FilePair(name, path) for name, path in images.items()]
        mask_dir = self.root / "masks" / split
        if not mask_dir.is_dir():
            raise DatasetLayoutError(f"no folder {mask_dir} for the masks of {image_dir}; expected:\n{LAYOUT}")
        pairs = pair_by_stem(images, files_below(mask_dir, (".png",)), self.describe(split), LAYOUT)
        return [FilePair(name, image, mask, self.label_table) for name, image, mask in pairs]

    def describe(self, split: str) -> str:
        return f"dataset {split} ({self.root})"

    def encode_prediction(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> the classes' mask values (uint8), as the mask files hold them."""
        return self.mask_values[train_ids]
