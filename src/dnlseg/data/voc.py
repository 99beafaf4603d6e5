"""Pascal VOC 2012 (segmentation): 21 classes (background + 20), read in the devkit's on-disk layout.

Layout under ``root`` (the folder holding ``VOCdevkit/``, as the archive unpacks; or the ``VOC2012`` folder)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png            palette PNGs (mode P): 0..20, 255 = border/void
    VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt    one id per line: train (1,464), val (1,449), trainval
    optional, the SBD "aug" annotations as mmsegmentation prepares them
    (tools/dataset_converters/voc_aug.py VOCdevkit benchmark_RELEASE):
    VOCdevkit/VOC2012/SegmentationClassAug/<id>.png         single channel, 0..20
    VOCdevkit/VOC2012/ImageSets/Segmentation/aug.txt        SBD ids not in train or val (9,118)
    VOCdevkit/VOC2012/ImageSets/Segmentation/trainaug.txt   train + aug (10,582)

A split is the name of a list in ``ImageSets/Segmentation``; ``train+aug`` joins lists in order (mmseg's voc12aug
recipes train on ``train`` with ``SegmentationClass`` and ``aug`` with ``SegmentationClassAug``, concatenated).
An id's label is ``SegmentationClass/<id>.png`` where that exists (VOC's own annotation), else
``SegmentationClassAug/<id>.png``. Label values are the train ids; 255 is ignored.

Predictions (``dnlseg predict``, ``labels/``) are written as VOC's own label files: palette PNGs (mode P) holding
the class ids 0..20 with VOC's colour map, which the devkit's evaluation and mmseg read as they read
``SegmentationClass``. Class names and colours: mmsegmentation's ``PascalVOCDataset``.
"""

from __future__ import annotations

from pathlib import Path

from dnlseg.data.base import IGNORE_INDEX
from dnlseg.data.folder import (
    DEFAULT_CHECKS,
    FilePair,
    FolderDataModule,
    SetupChecks,
    dataset_folder,
    listed_pairs,
    lookup_table,
)
from dnlseg.data.loaders import LoaderOptions
from dnlseg.data.transforms import TrainAugmentation
from dnlseg.errors import DatasetLayoutError

ENV_VAR = "VOC_ROOT"
FOLDERS = ("VOCdevkit/VOC2012", "VOC2012")  # under root, first found; else root itself if it holds JPEGImages/
LISTS = "ImageSets/Segmentation"
LABEL_FOLDERS = ("SegmentationClass", "SegmentationClassAug")  # an id's label: the first folder that has it
LAYOUT = """  <root>/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  <root>/VOCdevkit/VOC2012/SegmentationClass/<id>.png   (palette PNG: 0..20, 255 void)
  <root>/VOCdevkit/VOC2012/ImageSets/Segmentation/<split>.txt   (one id per line: train, val, ...)
  optional SBD aug (mmseg's voc_aug.py): SegmentationClassAug/<id>.png, ImageSets/Segmentation/{aug,trainaug}.txt
  (root may also be the VOC2012 folder itself)"""

CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)  # 21


def voc_colormap(count: int = 256) -> tuple[tuple[int, int, int], ...]:
    """Pascal VOC's colour map (the devkit's ``VOClabelcolormap``) for the values 0..count-1.

    Value v's bits, lowest first, go three at a time to R, G and B, from each channel's top bit down:
    1 -> (128, 0, 0), 2 -> (0, 128, 0), 8 -> (64, 0, 0), 255 -> (224, 224, 192).
    """
    colours = []
    for value in range(count):
        r = g = b = 0
        for shift in range(8):
            r |= ((value >> (3 * shift)) & 1) << (7 - shift)
            g |= ((value >> (3 * shift + 1)) & 1) << (7 - shift)
            b |= ((value >> (3 * shift + 2)) & 1) << (7 - shift)
        colours.append((r, g, b))
    return tuple(colours)


COLORMAP = voc_colormap(256)  # the palette of VOC's label PNGs
PALETTE = COLORMAP[:NUM_CLASSES]
LABEL_TABLE = lookup_table({value: value for value in range(NUM_CLASSES)}, ignore_values=(IGNORE_INDEX,))

VOC_AUGMENTATION = TrainAugmentation(
    crop_size=(512, 512), scale_range=(0.5, 2.0), scale_base=(2048, 512), cat_max_ratio=0.75
)
VOC_LOADER = LoaderOptions(batch_size=4, val_batch_size=1)  # 4 x 4 GPUs = the recipes' 16; sizes differ: 1


def read_split(folder: Path, split: str) -> list[tuple[str, str]]:
    """(id, list name) of every line of the lists ``split`` names (``train+aug``: both, in order)."""
    ids = []
    for name in split.split("+"):
        path = folder / LISTS / f"{name}.txt"
        if not path.is_file():
            found = sorted(p.stem for p in (folder / LISTS).glob("*.txt"))
            raise DatasetLayoutError(
                f"Pascal VOC: no split list {path} (lists there: {', '.join(found) or 'none'}; the SBD aug lists "
                "come from mmsegmentation's tools/dataset_converters/voc_aug.py)"
            )
        lines = [line.strip() for line in path.read_text().splitlines()]
        for number, line in enumerate(lines, start=1):
            if line and (len(line.split()) > 1 or "/" in line):
                raise DatasetLayoutError(f"Pascal VOC: line {number} of {path} is not one sample id: {line!r}")
        if not any(lines):
            raise DatasetLayoutError(f"Pascal VOC: the split list {path} is empty")
        ids += [(line, name) for line in lines if line]
    return ids


def voc_pairs(root: Path, split: str, labelled: bool = True) -> list[FilePair]:
    """The samples of ``split`` (its list files); raise ``DatasetLayoutError`` naming what is missing."""
    folder = dataset_folder(root, FOLDERS, "JPEGImages", "Pascal VOC", LAYOUT)
    ids = read_split(folder, split)
    aug_ids = {id_ for id_, name in ids if "aug" in name}  # a missing label is named in SegmentationClassAug

    def label_of(id_: str) -> Path:
        candidates = [folder / labels / f"{id_}.png" for labels in LABEL_FOLDERS]
        return next((p for p in candidates if p.is_file()), candidates[1] if id_ in aug_ids else candidates[0])

    return listed_pairs(
        [id_ for id_, _ in ids],
        lambda id_: folder / "JPEGImages" / f"{id_}.jpg",
        label_of if labelled else None,
        LABEL_TABLE,
        f"Pascal VOC {split} ({folder / LISTS}/{split.replace('+', '.txt, ')}.txt)",
    )


class VOCDataModule(FolderDataModule):
    """Pascal VOC 2012 segmentation, 21 classes, 255 ignored (module docstring for the layout and splits).

    Items are dicts ``{"image": (3, H, W) float, ImageNet-normalised, "mask": (H, W) int64 class ids 0..20 or
    255, "name": "2007_000032"}``. Training items are augmented 512x512 crops; evaluation items are whole images
    at their original size (about 500x375; sizes differ: ``loader.val_batch_size`` 1).

    Args:
        root: the folder holding ``VOCdevkit/`` (or the ``VOC2012`` folder); null: the environment variable
            ``VOC_ROOT``.
        train_split: list(s) to train on: ``train``; with the SBD annotations ``train+aug`` (mmseg's voc12aug)
            or ``trainaug``.
        val_split: list to validate on.
        test_split: list for ``dnlseg test``.
        predict_split: list for ``dnlseg predict`` when ``predict_dir`` is null (``test`` of the test release
            needs no labels).
        augmentation: the training augmentation (default: mmseg's 512x512 VOC pipeline, short side ~512 at
            scale 1).
        loader: batch sizes (the recipes: 4 crops x 4 GPUs = 16), workers, ``pin_memory``.
        checks: setup checks; ``label_values`` decodes every label of the splits in use.
        seed: seeds shuffling and augmentation; null: the run's ``seed_everything`` seed.
        predict_dir: a folder of images to predict instead (subfolders read; no root needed).
    """

    dataset = "Pascal VOC"
    env_var = ENV_VAR
    layout = LAYOUT
    label_palette = list(COLORMAP)

    def __init__(
        self,
        root: str | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        predict_split: str = "val",
        augmentation: TrainAugmentation = VOC_AUGMENTATION,
        loader: LoaderOptions = VOC_LOADER,
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
        return voc_pairs(self.dataset_root(), split, labelled)
