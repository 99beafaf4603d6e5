"""Datasets stored as (image file, label file) pairs: the shared Dataset, its checks, and the DataModule base.

A dataset's DataModule (``cityscapes.py``, ``ade20k.py``) only says where its files are and how its label
values map to train ids; this file reads, checks and serves them:

- ``FilePair``: one image, its label file (None for unlabelled images) and the 256-entry lookup table that
  maps the label file's values to train ids in [0, num_classes) or ``ignore_index`` (-1: not a valid value).
- ``check_pairs``: at setup, before any training: every image has a label and the other way round (the
  caller pairs them), image and label sizes agree, and (optionally) every label value is valid. All problems
  are collected and reported together, each with its path.
- ``SegmentationFiles``: the torch Dataset; a file that cannot be decoded raises ``CorruptFileError``
  naming it.
- ``image_folder_pairs`` / ``predict_folder_loader``: every image under a folder, for ``dnlseg predict`` with
  ``predict_dir`` (any DataModule).
- ``FolderDataModule``: loaders, seeding, splits per stage (abstract: a dataset's module says where its files are).
"""

from __future__ import annotations

import logging
import os
import time
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dnlseg.data.base import IGNORE_INDEX, SegmentationDataModule
from dnlseg.data.loaders import build_loader, trainer_rank_and_world_size
from dnlseg.data.transforms import (
    TrainAugmentation,
    eval_transform,
    init_worker,
    seed_transform,
    train_transform,
    worker_seed,
)
from dnlseg.errors import UserError

log = logging.getLogger(__name__)

MAX_REPORTED = 10  # problems listed in one error message
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what a predict_dir is searched for (any case)


class DatasetLayoutError(UserError, ValueError):
    """The files on disk are not the dataset's expected layout or content."""


class CorruptFileError(UserError, RuntimeError):
    """An image or label file could not be decoded."""


@dataclass(frozen=True, eq=False)  # eq=False: label_map is an array
class FilePair:
    """One sample on disk.

    Attributes:
        name: the sample's name; predictions are written as ``<name>.png``.
        image: the image file.
        label: the label file, or None for an unlabelled image (prediction only).
        label_map: (256,) int16 lookup table label value -> train id or ``ignore_index``; -1 marks invalid values.
    """

    name: str
    image: Path
    label: Path | None = None
    label_map: np.ndarray | None = None


def lookup_table(mapping: dict[int, int], ignore_values: Sequence[int] = ()) -> np.ndarray:
    """(256,) int16: ``mapping`` value -> train id, ``ignore_values`` -> 255, anything else -> -1 (invalid)."""
    table = np.full(256, -1, dtype=np.int16)
    for value in ignore_values:
        table[value] = IGNORE_INDEX
    for value, train_id in mapping.items():
        table[value] = train_id
    return table


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; grey or 4-channel files are converted. Raises ``CorruptFileError`` naming the file."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if image is None:
        raise CorruptFileError(f"cannot decode image {path} (missing, empty or not an image file)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path, label_map: np.ndarray | None) -> np.ndarray:
    """(H, W) uint8 train ids (or 255) of a single-channel label PNG, mapped through ``label_map``.

    Raises ``CorruptFileError`` if the file cannot be decoded or is not single-channel, and
    ``DatasetLayoutError`` if it holds values the dataset does not define.
    """
    try:
        with Image.open(path) as file:
            if file.mode not in ("L", "P", "I;16", "I"):
                raise CorruptFileError(f"label {path} has image mode {file.mode!r}; expected single-channel 'L'")
            label = np.asarray(file)
    except (OSError, SyntaxError, ValueError) as error:  # PIL raises these for truncated or foreign files
        raise CorruptFileError(f"cannot decode label {path}: {error}") from error
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise DatasetLayoutError(f"label {path} holds values outside 0..255 (dtype {label.dtype})")
        label = label.astype(np.uint8)
    if label_map is None:
        return label
    mapped = label_map[label]
    if (mapped < 0).any():
        bad = np.unique(label[mapped < 0])
        raise DatasetLayoutError(
            f"label {path} holds values {bad.tolist()[:20]} outside the dataset's label values "
            f"({describe_values(np.flatnonzero(label_map >= 0))}, see the DataModule docstring)"
        )
    return mapped.astype(np.uint8)


def describe_values(values: Sequence[int]) -> str:
    """Sorted integers as ranges: [0, 1, ..., 18, 255] -> "0..18, 255"."""
    ranges: list[list[int]] = []
    for value in sorted(int(v) for v in values):
        if ranges and value == ranges[-1][1] + 1:
            ranges[-1][1] = value
        else:
            ranges.append([value, value])
    return ", ".join(str(a) if a == b else f"{a}..{b}" if b > a + 1 else f"{a}, {b}" for a, b in ranges)


def check_pair(pair: FilePair, check_values: bool) -> str | None:
    """None if ``pair`` is readable and consistent, else one line naming the problem and the path."""
    try:
        with Image.open(pair.image) as image:
            image_size = image.size  # (W, H), header only
    except (OSError, SyntaxError, ValueError) as error:
        return f"cannot read image {pair.image}: {error}"
    if pair.label is None:
        return None
    try:
        if check_values:
            label = read_label(pair.label, pair.label_map)
            label_size = (label.shape[1], label.shape[0])
        else:
            with Image.open(pair.label) as file:
                label_size = file.size
    except (CorruptFileError, DatasetLayoutError) as error:
        return str(error)
    except (OSError, SyntaxError, ValueError) as error:
        return f"cannot read label {pair.label}: {error}"
    if image_size != label_size:
        return (
            f"size mismatch: image {pair.image} is {image_size[0]}x{image_size[1]} (WxH), "
            f"label {pair.label} is {label_size[0]}x{label_size[1]}"
        )
    return None


def check_pairs(pairs: Sequence[FilePair], what: str, check_values: bool = True, num_threads: int = 8) -> None:
    """Raise ``DatasetLayoutError`` listing every unreadable file, size mismatch and invalid label value.

    Image headers are read; labels are decoded in full when ``check_values`` (threads: PNG decoding releases
    the GIL).

    Args:
        pairs: the samples of one split.
        what: names the split in the message, e.g. "Cityscapes val (/data/cityscapes)".
        check_values: decode every label and check its values against ``label_map``.
        num_threads: reader threads.
    """
    start = time.perf_counter()
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        problems = [p for p in pool.map(partial(check_pair, check_values=check_values), pairs) if p]
    log.info("checked %d samples of %s in %.1f s", len(pairs), what, time.perf_counter() - start)
    if problems:
        listed = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise DatasetLayoutError(f"{len(problems)} bad samples in {what}:\n  {listed}{more}")


def pair_by_stem(
    images: dict[str, Path], labels: dict[str, Path], what: str, layout: str
) -> list[tuple[str, Path, Path]]:
    """Match images and labels by sample name; raise naming the unmatched files on either side."""
    missing_labels = sorted(set(images) - set(labels))
    missing_images = sorted(set(labels) - set(images))
    if missing_labels or missing_images:
        lines = [f"image without label: {images[n]}" for n in missing_labels[:MAX_REPORTED]]
        lines += [f"label without image: {labels[n]}" for n in missing_images[:MAX_REPORTED]]
        raise DatasetLayoutError(
            f"{what}: {len(missing_labels)} images without labels and {len(missing_images)} labels without images:"
            "\n  " + "\n  ".join(lines) + f"\nexpected layout:\n{layout}"
        )
    return [(name, images[name], labels[name]) for name in sorted(images)]


class SegmentationFiles(Dataset):
    """Map-style dataset over ``FilePair``s: items ``{"image": (3, H, W) float, "mask": (H, W) int64, "name"}``.

    Unlabelled pairs give no ``"mask"``. ``transform`` is an albumentations pipeline on ``image`` (uint8 RGB)
    and ``mask`` (uint8 train ids) that ends with normalisation.

    Args:
        pairs: the samples.
        transform: the pipeline; seeded per worker by ``transforms.init_worker``.
    """

    def __init__(self, pairs: Sequence[FilePair], transform: A.Compose) -> None:
        self.pairs = list(pairs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        pair = self.pairs[index]
        image = read_image(pair.image)
        if pair.label is None:
            out = self.transform(image=image)
            return {"image": torch.from_numpy(out["image"].transpose(2, 0, 1).copy()), "name": pair.name}
        label = read_label(pair.label, pair.label_map)
        if label.shape != image.shape[:2]:
            raise DatasetLayoutError(
                f"size mismatch: image {pair.image} is {image.shape[1]}x{image.shape[0]} (WxH), "
                f"label {pair.label} is {label.shape[1]}x{label.shape[0]}"
            )
        out = self.transform(image=image, mask=label)
        return {
            "image": torch.from_numpy(out["image"].transpose(2, 0, 1).copy()),
            "mask": torch.from_numpy(out["mask"].astype(np.int64)),
            "name": pair.name,
        }


def image_folder_pairs(folder: Path) -> list[FilePair]:
    """Every PNG/JPEG image under ``folder``, subfolders included (hidden ones not), unlabelled.

    A sample's name is its path below ``folder`` without the suffix (``city/img_01``), so predictions keep the
    folder structure and two files of one name in different subfolders do not collide.
    """
    if not folder.is_dir():
        raise DatasetLayoutError(f"predict_dir {folder} does not exist or is not a folder")
    files = [
        p
        for p in sorted(folder.rglob("*"))
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not any(part.startswith(".") for part in p.parts)
    ]
    names = [p.relative_to(folder).with_suffix("").as_posix() for p in files]
    if not files:
        raise DatasetLayoutError(f"predict_dir {folder} holds no images ({'/'.join(IMAGE_SUFFIXES)}, subfolders read)")
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise DatasetLayoutError(f"predict_dir {folder}: images of the same name with other suffixes: {clash[:5]}")
    return [FilePair(name, path) for name, path in zip(names, files, strict=True)]


def predict_folder_loader(folder: str | Path, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches of one image (sizes differ) from ``folder``, each at its own size, normalised as for evaluation.

    Items ``{"image": (3, H, W) float, "name": str}``; grey and RGBA images are read as RGB. Every file is
    checked to be a readable image before the first batch (``DatasetLayoutError`` listing the bad ones).
    """
    folder = Path(folder).expanduser()
    pairs = image_folder_pairs(folder)
    check_pairs(pairs, f"predict_dir {folder}", check_values=False)
    dataset = SegmentationFiles(pairs, eval_transform())
    return build_loader(dataset, train=False, batch_size=1, seed=0, num_workers=num_workers, pin_memory=pin_memory)


def resolve_root(root: str | Path | None, env_var: str, dataset: str) -> Path:
    """``root``, else ``$env_var``; raise naming both when neither is set."""
    if root is None:
        root = os.environ.get(env_var)
        if not root:
            raise DatasetLayoutError(
                f"no {dataset} root: set the DataModule's `root` (e.g. --data.init_args.root=/path/to/{dataset}) "
                f"or the environment variable {env_var}"
            )
    return Path(root).expanduser()


class FolderDataModule(SegmentationDataModule):
    """Shared by the file-based datasets; subclasses set the class metadata and implement ``find_pairs``.

    Subclasses set in ``__init__``: ``num_classes``, ``class_names``, ``ignore_index``, ``palette`` (linked
    into the model by the CLI), ``splits`` (stage -> split name) and call ``super().__init__``.

    Args:
        augmentation: the training augmentation.
        batch_size: training images per batch (per device).
        val_batch_size: evaluation images per batch; images of different sizes need 1.
        num_workers: DataLoader worker processes per loader (0: load in the main process).
        pin_memory: DataLoader ``pin_memory`` (when a CUDA device is present).
        seed: seeds the training shuffle and the augmentation (with the worker id and rank); null: the global
            seed that ``seed_everything`` set (``torch.initial_seed()``), so a run follows its one seed.
        check_label_values: at setup, decode every label of the splits in use and check its values (slower
            on the full datasets; with false, values are still checked whenever a label is loaded).
        check_threads: threads for the setup checks.
        predict_dir: a folder of images for ``dnlseg predict`` instead of the predict split (no dataset root
            needed; ``image_folder_pairs``).
    """

    layout: str = ""  # the expected layout, for error messages
    env_var: str = ""

    def __init__(
        self,
        augmentation: TrainAugmentation,
        batch_size: int,
        val_batch_size: int,
        num_workers: int,
        pin_memory: bool,
        seed: int | None,
        check_label_values: bool,
        check_threads: int,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        self.augmentation = augmentation
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.check_label_values = check_label_values
        self.check_threads = check_threads
        self.predict_dir = predict_dir
        self.ignore_index: int = IGNORE_INDEX
        self.splits: dict[str, str] = {}  # "train" / "val" / "test" / "predict" -> the dataset's split name
        self.datasets: dict[str, SegmentationFiles] = {}

    # --- what a subclass provides -------------------------------------------------------------------------
    @abstractmethod
    def find_pairs(self, split: str, labelled: bool) -> list[FilePair]:
        """The samples of ``split``, checked for layout and pairing; raise ``DatasetLayoutError`` if wrong."""

    def describe(self, split: str) -> str:
        """Names a split in messages, e.g. "Cityscapes val (/data/cityscapes)"."""
        return f"{type(self).__name__} {split}"

    # --- Lightning hooks ----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Find and check the splits ``stage`` uses: fit -> train, val; validate -> val; test; predict."""
        roles = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
        for role in roles.get(stage or "fit", ("train", "val")):
            if role in self.datasets or (role == "predict" and self.predict_dir is not None):
                continue  # predict_dir: read by predict_dataloader, no dataset root needed
            split = self.splits[role]
            labelled = role != "predict"
            pairs = self.find_pairs(split, labelled)
            check_pairs(pairs, self.describe(split), self.check_label_values and labelled, self.check_threads)
            if role == "train":
                transform = train_transform(self.augmentation, self.ignore_index)
            else:
                transform = eval_transform()
            self.datasets[role] = SegmentationFiles(pairs, transform)
            log.info("%s: %d images", self.describe(split), len(pairs))

    def _loader(self, role: str) -> DataLoader:
        if role not in self.datasets:
            self.setup({"train": "fit", "val": "validate"}.get(role, role))
        dataset = self.datasets[role]
        train = role == "train"
        rank, world_size = trainer_rank_and_world_size(self)
        seed = self.seed if self.seed is not None else torch.initial_seed() % 2**63
        if train:  # the main-process stream (num_workers=0); workers reseed their copies in init_worker
            seed_transform(dataset.transform, worker_seed(seed, rank))
        return build_loader(
            dataset,
            train=train,
            batch_size=self.batch_size if train else self.val_batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=train,
            worker_init_fn=partial(init_worker, rank=rank),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is not None:
            return predict_folder_loader(self.predict_dir, self.num_workers, self.pin_memory)
        return self._loader("predict")
