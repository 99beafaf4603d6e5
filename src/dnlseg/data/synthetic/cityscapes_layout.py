"""Synthetic images written in the Cityscapes on-disk layout: fixtures for the real loaders and evaluator.

Cityscapes mapping (``write_cityscapes_layout``): each synthetic class is written as a Cityscapes class
whose colour resembles its ink, so the files read like real Cityscapes annotations:

=========== ======== ================= =======
synthetic   trainId  Cityscapes label  labelId
=========== ======== ================= =======
background  0        road              7
red         11       person            24
green       8        vegetation        21
blue        13       car               26
yellow      6        traffic light     19
ignore 255  255      unlabeled         0
=========== ======== ================= =======
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from dnlseg.data.synthetic.scene import check_difficulty, check_groups, check_image_size, generate_sample, image_shape

log = logging.getLogger(__name__)

# Synthetic class -> Cityscapes trainId (road, person, vegetation, car, traffic light); see the table above.
CITYSCAPES_TRAIN_IDS = (0, 11, 8, 13, 6)
CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
CITYSCAPES_FRAME = 19  # gtFine frames are the 20th frame of each snippet: <city>_<seq>_000019
LABEL_KINDS = ("labelIds", "labelTrainIds", "color")


def write_cityscapes_layout(
    root: str | Path,
    num_train: int,
    num_val: int,
    image_size: int | tuple[int, int] = (64, 128),
    seed: int = 0,
    label_kinds: Sequence[str] = ("labelIds", "labelTrainIds"),
    difficulty: float = 0.5,
    groups: int = 1,
    **scene,
) -> Path:
    """Write synthetic images in the Cityscapes on-disk layout under ``root``; returns ``root``.

    Files: ``leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019_leftImg8bit.png`` (8-bit RGB) and
    ``gtFine/<split>/<city>/<city>_<seq:06d>_000019_gtFine_<kind>.png`` for each label kind: ``labelIds``
    and ``labelTrainIds`` are 8-bit single-channel ("L"), ``color`` is RGBA as in Cityscapes. Train images
    go round-robin to aachen and bochum, val images to frankfurt. Class mapping: module docstring.

    Args:
        root: output folder (created if missing).
        num_train: train images (>= 0).
        num_val: val images (>= 0).
        image_size: (height, width), or one int for square images; each a multiple of 8 and >= 32.
        seed: dataset seed; image i of a split is ``generate_sample(seed, i, split, ...)``.
        label_kinds: subset of ("labelIds", "labelTrainIds", "color").
        difficulty: in [0, 1].
        groups: legend entries per image, 1 to 4.
        scene: keyword options of ``generate_sample`` (``texture_levels``, ``random_textures``, ``ink``,
            ``boundary_void``).
    """
    height, width = image_shape(image_size)
    check_image_size("image_size", height)
    check_image_size("image_size", width)
    check_difficulty(difficulty)
    check_groups(groups)
    for name, value in (("num_train", num_train), ("num_val", num_val), ("seed", seed)):
        if value < 0:
            raise ValueError(f"{name}={value} must be >= 0")
    unknown = [k for k in label_kinds if k not in LABEL_KINDS]
    if unknown:
        raise ValueError(f"label_kinds: unknown kinds {unknown}; expected a subset of {LABEL_KINDS}")

    # Lookup tables synthetic id (0..4, 255) -> trainId / labelId / colour.
    to_train_id = np.full(256, 255, dtype=np.uint8)
    to_train_id[: len(CITYSCAPES_TRAIN_IDS)] = CITYSCAPES_TRAIN_IDS
    to_label_id = np.zeros(256, dtype=np.uint8)  # 0 = "unlabeled" for the ignore label
    to_color = np.zeros((256, 4), dtype=np.uint8)  # unlabeled: (0, 0, 0, 255) as in Cityscapes
    to_color[:, 3] = 255
    for cls, train_id in enumerate(CITYSCAPES_TRAIN_IDS):
        to_label_id[cls] = trainId2label[train_id].id
        to_color[cls, :3] = trainId2label[train_id].color

    root = Path(root)
    for split, count in (("train", num_train), ("val", num_val)):
        cities = CITYSCAPES_CITIES[split]
        for index in range(count):
            city, seq = cities[index % len(cities)], index // len(cities)
            stem = f"{city}_{seq:06d}_{CITYSCAPES_FRAME:06d}"
            sample = generate_sample(seed, index, split, height, width, difficulty, groups, **scene)
            image_dir = root / "leftImg8bit" / split / city
            label_dir = root / "gtFine" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sample.image).save(image_dir / f"{stem}_leftImg8bit.png")
            tables = {"labelIds": to_label_id, "labelTrainIds": to_train_id, "color": to_color}
            for kind in label_kinds:
                Image.fromarray(tables[kind][sample.mask]).save(label_dir / f"{stem}_gtFine_{kind}.png")
    log.info("wrote %d train and %d val synthetic images in the Cityscapes layout to %s", num_train, num_val, root)
    return root
