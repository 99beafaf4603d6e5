"""Datasets stored as (image file, label file) pairs: the shared Dataset, its checks, and the DataModule base.

A dataset's DataModule (``cityscapes.py``, ``ade20k.py``, ``image_mask.py``, ``voc.py``) says only where its files
are, its classes and how its label values map to train ids; this file finds, reads, checks and serves them:

- ``FilePair``: one image, its label file (None for unlabelled images) and the 256-entry lookup table that
  maps the label file's values to train ids in [0, num_classes) or ``ignore_index`` (-1: not a valid value).
- Finding a split's samples, with the layout checks every dataset makes (each failure names the path and the
  expected layout): ``resolve_root`` (the root is set and is a folder), ``dataset_folder`` (the dataset's folder
  under the root), then one of the two pairing helpers: ``folder_pairs`` for an image folder and a label folder
  whose files match by name (Cityscapes, ADE20K, own data), ``listed_pairs`` for a split given as a list of
  sample ids (Pascal VOC).
- ``check_pairs``: at setup, before any training: image and label sizes agree, and (optionally) every label
  value is valid. All problems are collected and reported together, each with its path.
- ``SegmentationFiles``: the torch Dataset; a file that cannot be decoded raises ``CorruptFileError``
  naming it.
- ``image_folder_pairs`` / ``predict_folder_loader``: every image under a folder, for ``dnlseg predict`` with
  ``predict_dir`` (any DataModule).
- ``FolderDataModule``: what every file dataset's DataModule shares: its root, the training augmentation, the
  loader options (``LoaderOptions``), the setup checks (``SetupChecks``), seeding, ``predict_dir``, and the
  splits each stage uses (abstract: a dataset's module says where its files are, in ``find_pairs``).
"""

from __future__ import annotations

import logging
import os
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
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
from dnlseg.data.loaders import LoaderOptions, build_loader, trainer_rank_and_world_size
from dnlseg.data.transforms import (
    TrainAugmentation,
    eval_transform,
    init_worker,
    seed_transform,
    train_transform,
    worker_seed,
)
from dnlseg.errors import CorruptFileError, DatasetLayoutError

log = logging.getLogger(__name__)

MAX_REPORTED = 10  # problems listed in one error message
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what a predict_dir is searched for (any case)


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
            f"({describe_values(np.flatnonzero(label_map >= 0).tolist())}, see the DataModule docstring)"
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

    One problem is reported in one line, ``<what>: <problem>``; several as a count and one line each.

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
    if len(problems) == 1:
        raise DatasetLayoutError(f"{what}: {problems[0]}")  # one line
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


LabelMap = np.ndarray | Callable[[Path], np.ndarray]  # one lookup table, or one per label file (by its name)


def folder_pairs(
    image_dir: Path,
    label_dir: Path,
    labelled: bool,
    *,
    list_images: Callable[[Path], dict[str, Path]],
    image_pattern: str,
    list_labels: Callable[[Path], dict[str, Path]],
    label_map: LabelMap,
    what: str,
    layout: str,
) -> list[FilePair]:
    """The samples of a split stored as an image folder and a label folder whose files match by name.

    Checks, each failure a ``DatasetLayoutError`` naming the folder or file and the expected ``layout``: the
    image folder exists and holds images; for a labelled split, the label folder exists, every image has a
    label and every label an image.

    Args:
        image_dir: the split's image folder.
        label_dir: the split's label folder (not looked at when ``labelled`` is false).
        labelled: read the labels (false: images only, e.g. a test split for prediction).
        list_images: the images of a folder, by sample name.
        image_pattern: what ``list_images`` looks for, in messages (``*/*_leftImg8bit.png``).
        list_labels: the label files of a folder, by sample name.
        label_map: the lookup table of every label file, or a function of the label file giving its table.
        what: names the split in messages, e.g. "Cityscapes val (/data/cityscapes)".
        layout: the expected layout, appended to layout errors.
    """
    if not image_dir.is_dir():
        raise DatasetLayoutError(f"{what}: no folder {image_dir}; expected:\n{layout}")
    images = list_images(image_dir)
    if not images:
        raise DatasetLayoutError(f"{what}: no images {image_pattern} in {image_dir} (empty split); expected:\n{layout}")
    if not labelled:
        return [FilePair(name, path) for name, path in images.items()]
    if not label_dir.is_dir():
        raise DatasetLayoutError(f"{what}: no folder {label_dir} for the labels of {image_dir}; expected:\n{layout}")
    pairs = pair_by_stem(images, list_labels(label_dir), what, layout)
    table = label_map if callable(label_map) else lambda _: label_map
    return [FilePair(name, image, label, table(label)) for name, image, label in pairs]


def listed_pairs(
    names: Sequence[str],
    image_of: Callable[[str], Path],
    label_of: Callable[[str], Path] | None,
    label_map: np.ndarray,
    what: str,
) -> list[FilePair]:
    """The samples of a split given as a list of names (a split file), each with its image and label file.

    Raises ``DatasetLayoutError`` in one line naming the missing files (the first few) and how many there are.

    Args:
        names: the split's sample names, in order (duplicates are kept once).
        image_of: a name's image file.
        label_of: a name's label file; None: images only (prediction).
        label_map: the lookup table of the label files.
        what: names the split and its list in messages.
    """
    names = list(dict.fromkeys(names))
    files = [(name, image_of(name), label_of(name) if label_of is not None else None) for name in names]
    missing = [str(p) for _, image, label in files for p in (image, label) if p is not None and not p.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatasetLayoutError(f"{what}: {len(missing)} listed files do not exist: {shown}")
    return [FilePair(name, image, label, label_map if label is not None else None) for name, image, label in files]


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


def resolve_root(root: str | Path | None, env_var: str, dataset: str, layout: str) -> Path:
    """``root``, else ``$env_var``; raise naming both when neither is set, and naming the path when it is no folder."""
    if root is None:
        root = os.environ.get(env_var) if env_var else None
        if not root:
            raise DatasetLayoutError(
                f"no {dataset} root: set the DataModule's `root` (e.g. --data.init_args.root=/path/to/{dataset})"
                + (f" or the environment variable {env_var}" if env_var else "")
            )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetLayoutError(f"{dataset} root {root} does not exist or is not a folder; expected:\n{layout}")
    return root


def dataset_folder(root: Path, candidates: Sequence[str], marker: str, dataset: str, layout: str) -> Path:
    """The first ``root/<candidate>`` that is a folder, else ``root`` itself when it holds ``marker``.

    How an archive unpacks (``<root>/ADEChallengeData2016``, ``<root>/VOCdevkit/VOC2012``) or that folder itself.
    """
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    if (root / marker).is_dir():
        return root
    tried = " nor ".join(str(root / c) for c in candidates)
    raise DatasetLayoutError(f"{dataset}: neither {tried} nor {root / marker} exists; expected:\n{layout}")


@dataclass(frozen=True)
class SetupChecks:
    """What a file DataModule checks at setup, before the first step (layout, pairing and image sizes always).

    Args:
        label_values: decode every label of the splits in use and check its values (slower on the full datasets;
            with false, values are still checked whenever a label is loaded).
        threads: reader threads for the checks.
    """

    label_values: bool = True
    threads: int = 8


DEFAULT_CHECKS = SetupChecks()


class FolderDataModule(SegmentationDataModule):
    """What the file datasets share; a subclass sets its classes and splits and implements ``find_pairs``.

    A subclass calls ``super().__init__(...)`` with its keyword arguments and ``self.save_hyperparameters()``
    (its own signature holds every argument), then sets ``num_classes``,
    ``class_names``, ``palette`` (linked into the model by the CLI; ``ignore_index`` is 255 here) and ``splits``
    (stage -> the dataset's split name); as class attributes ``dataset`` (its name in messages), ``env_var``
    (where ``root`` may come from) and ``layout`` (the expected layout, for error messages).

    Args:
        root: the dataset folder; null: the environment variable ``env_var``.
        augmentation: the training augmentation.
        loader: batch sizes, workers, ``pin_memory`` (``LoaderOptions``).
        checks: what setup checks before training (``SetupChecks``).
        seed: seeds the training shuffle and the augmentation (with the worker id and rank); null: the global
            seed that ``seed_everything`` set (``torch.initial_seed()``), so a run follows its one seed.
        predict_dir: a folder of images for ``dnlseg predict`` instead of the predict split (no dataset root
            needed; ``image_folder_pairs``).
    """

    dataset: str = ""  # the dataset's name in messages ("Cityscapes"); empty: the class name
    env_var: str = ""
    layout: str = ""

    def __init__(
        self,
        *,
        root: str | None = None,
        augmentation: TrainAugmentation,
        loader: LoaderOptions,
        checks: SetupChecks,
        seed: int | None = None,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.root = root
        self.augmentation = augmentation
        self.loader = loader
        self.checks = checks
        self.seed = seed
        self.predict_dir = predict_dir
        self.ignore_index: int = IGNORE_INDEX
        self.splits: dict[str, str] = {}  # "train" / "val" / "test" / "predict" -> the dataset's split name
        self.datasets: dict[str, SegmentationFiles] = {}

    def dataset_root(self) -> Path:
        """``root`` (or ``$env_var``), checked to be a folder."""
        return resolve_root(self.root, self.env_var, self.dataset or type(self).__name__, self.layout)

    # --- what a subclass provides -------------------------------------------------------------------------
    @abstractmethod
    def find_pairs(self, split: str, labelled: bool) -> list[FilePair]:
        """The samples of ``split``, checked for layout and pairing; raise ``DatasetLayoutError`` if wrong."""

    def describe(self, split: str) -> str:
        """Names a split in messages, e.g. "Cityscapes val (/data/cityscapes)"."""
        root = self.root or (f"${self.env_var}" if self.env_var else None)
        return f"{self.dataset or type(self).__name__} {split}" + (f" ({root})" if root else "")

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
            check_pairs(pairs, self.describe(split), self.checks.label_values and labelled, self.checks.threads)
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
            batch_size=self.loader.batch_size if train else self.loader.eval_batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            num_workers=self.loader.num_workers,
            pin_memory=self.loader.pin_memory,
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
            return predict_folder_loader(self.predict_dir, self.loader.num_workers, self.loader.pin_memory)
        return self._loader("predict")
