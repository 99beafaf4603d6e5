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
sizes, values), the same augmentation (``augmentation``) and loader options (``loader``), evaluation at full
resolution, and predictions written as mask values (``encode_prediction``) with the classes' colours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dnlseg.data.base import IGNORE_INDEX
from dnlseg.data.folder import (
    DEFAULT_CHECKS,
    IMAGE_SUFFIXES,
    FilePair,
    FolderDataModule,
    SetupChecks,
    folder_pairs,
    lookup_table,
)
from dnlseg.data.loaders import LoaderOptions
from dnlseg.data.transforms import TrainAugmentation
from dnlseg.errors import DatasetLayoutError, yaml_problem

CLASSES_FILE = "classes.yaml"
LAYOUT = """  <root>/images/<split>/<name>.png|.jpg|.jpeg
  <root>/masks/<split>/<name>.png   (single channel: the classes' values, or ignore_value)
  <root>/classes.yaml               (a list of {name, color: [r, g, b], value (optional)}, unless `classes` is set)"""

OWN_AUGMENTATION = TrainAugmentation(crop_size=(512, 512), scale_range=(0.5, 2.0), scale_base=None)
OWN_LOADER = LoaderOptions(batch_size=4, val_batch_size=1)  # images of different sizes: evaluated one by one


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
        train_split: folder name of the training split.
        val_split: folder name of the validation split.
        test_split: folder name of the split for ``dnlseg test``.
        predict_split: folder name of the split for ``dnlseg predict`` when ``predict_dir`` is null.
        augmentation: the training augmentation (default: 512x512 crops, rescale 0.5-2.0 of the image's own size).
        loader: batch sizes (``val_batch_size`` 1 unless all images have one size), workers, ``pin_memory``.
        checks: setup checks; ``label_values`` decodes every mask and checks its values.
        seed: seeds shuffling and augmentation; null: the run's ``seed_everything`` seed.
        predict_dir: a folder of images to predict instead (subfolders read; no root needed).
    """

    dataset = "dataset"
    layout = LAYOUT

    def __init__(
        self,
        root: str | None = None,
        classes: list[SegmentationClass] | None = None,
        ignore_value: int = IGNORE_INDEX,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_split: str = "val",
        augmentation: TrainAugmentation = OWN_AUGMENTATION,
        loader: LoaderOptions = OWN_LOADER,
        checks: SetupChecks = DEFAULT_CHECKS,
        seed: int | None = None,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__(
            root=root, augmentation=augmentation, loader=loader, checks=checks, seed=seed, predict_dir=predict_dir
        )
        self.save_hyperparameters()
        if classes is None:
            if root is None:
                raise DatasetLayoutError("ImageMaskDataModule needs `root` (with root/classes.yaml) or `classes`")
            where = str(Path(root).expanduser() / CLASSES_FILE)
            classes = read_classes(Path(root).expanduser() / CLASSES_FILE)
        else:
            where = "data.init_args.classes"
            classes = [SegmentationClass(**c) if isinstance(c, dict) else c for c in classes]
        values = check_classes(classes, ignore_value, where)
        self.num_classes: int = len(classes)
        self.class_names: list[str] = [c.name for c in classes]
        self.palette: list[tuple[int, int, int]] = [(c.color[0], c.color[1], c.color[2]) for c in classes]
        self.mask_values = np.asarray(values, dtype=np.uint8)  # train id -> mask value
        self.label_table = lookup_table(
            dict(zip(values, range(len(values)), strict=True)), ignore_values=[ignore_value]
        )
        self.splits = {"train": train_split, "val": val_split, "test": test_split, "predict": predict_split}

    def find_pairs(self, split: str, labelled: bool) -> list[FilePair]:
        root = self.dataset_root()
        return folder_pairs(
            root / "images" / split,
            root / "masks" / split,
            labelled,
            list_images=lambda folder: files_below(folder, IMAGE_SUFFIXES),
            image_pattern="*.png|.jpg|.jpeg (subfolders read)",
            list_labels=lambda folder: files_below(folder, (".png",)),
            label_map=self.label_table,
            what=self.describe(split),
            layout=LAYOUT,
        )

    def encode_prediction(self, train_ids: np.ndarray) -> np.ndarray:
        """(H, W) train ids -> the classes' mask values (uint8), as the mask files hold them."""
        return self.mask_values[train_ids]
