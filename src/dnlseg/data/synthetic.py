"""The built-in synthetic dataset: a segmentation task whose labels need long-range context.

Each image is generated from ``(seed, split, index)`` alone (numpy, about 5 ms at 128x128), so it is
the same in every run and in every DataLoader worker.

What an image shows: a mosaic of Voronoi regions (centres on a jittered grid of cells about a quarter
of sqrt(H * W) wide: 4x4 cells at 128x128) separated by thin dark outlines.

- The *legend*: the 2x2 block of cells in a random corner. ``groups`` of its regions are *keys*; each
  key is striped at its group's angle (0, 45, 90 or 135 degrees) and its stripes are inked in the
  colour of its class (red, green, blue, yellow). Groups have distinct angles and distinct classes.
- *Members*: the regions whose centre is at least 0.45 of the longer image side from every legend
  centre. Each joins a random group: striped at the group's angle, in grey, with the group's class.
  So distant regions sharing a texture belong to the same class, and which class a texture means is
  redrawn for every image.
- *Background*: all other regions (unused legend cells too), blotchy grey without stripes.
- *Void* (``ignore_index`` 255): a band along every region boundary, like the void pixels along
  object boundaries in Cityscapes, and 0-2 small blobs of clutter.

Why context is needed. A member's own pixels say "foreground, stripes at angle a", never which class:
the class is inked only on the legend, far away. At 128x128, 99% of member pixels lie >= 28 px from
every key pixel (median 53 px with 4 groups, 75 px with 1), i.e. more than 3 feature cells at output
stride 8, typically 7-9. Nothing else is informative: classes are drawn independently of the layout
and of the textures. So a model whose receptive field at a member does not reach the legend is at
chance there: 1/4 (4 foreground classes). Background and keys are locally decidable, so its best
expected pixel accuracy is ``1 - 3/4 * f``, ``f`` the share of labelled pixels in members
(``local_only_accuracy_bound``: about 0.71 at 128x128), and its mIoU is lower still. The label is
a deterministic function of the whole image:

- ``groups=1`` (default): every member has the one ink in the legend -- a global cue. An average over
  all positions carries it; a non-local block computes one from the start (near-uniform attention;
  DNL's unary term can single out the legend), convolutions must learn to carry it across the image.
- ``groups=G>1``: a model that sees the legend but cannot match textures is right on 1/G of member
  pixels; the rest needs the pairwise match "same stripes as that key" -- the within-category
  affinity the DNL paper finds in its pairwise term. That is a second-order problem (neither the
  texture nor the legend alone predicts the class), much slower to learn than the global cue.

What to expect (measured on the 2-core CPU, 128 px, batch 8, seed 0, SGD). With a full dilated ResNet-18
(``encoder_depth=5``, lr 0.01, 400 steps) the receptive field spans the whole 16x16 feature map, so the
baseline head is not local: a DNL head learned the global cue first (member-pixel accuracy 0.69 vs 0.34
after 100 steps) but the baseline caught up (both 0.97 after 300). The shipped configs therefore end
ResNet-18 after ``layer2`` (``encoder_depth=3``, stride 8, theoretical receptive field 99 px, effective
far less), so the cue must come from the head -- like objects on 1024x2048 Cityscapes images that span
far more than a ResNet's effective receptive field. There, after 800 steps at lr 0.03: baseline val
mIoU 0.349 (member IoUs 0.15-0.23: chance), NL 0.996, DNL 0.993. With 4 groups (full ResNet-18, 400
steps, lr 0.01) both stayed near chance on member pixels (0.29 and 0.28).

Difficulty ``d`` in [0, 1] sets the stripe contrast (0.8 - 0.3d), the ink saturation (1 - 0.5d), a
per-region jitter of the stripe angle (up to 11d degrees) and the pixel noise (std 0.02 + 0.1d on
[0, 1] intensities).

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
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dnlseg.data.base import SegmentationDataModule
from dnlseg.data.folder import predict_folder_loader
from dnlseg.data.resumable import ResumableDataLoader, train_sampler, trainer_rank_and_world_size
from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

CLASS_NAMES = ("background", "red", "green", "blue", "yellow")
NUM_FOREGROUND = len(CLASS_NAMES) - 1
IGNORE_INDEX = 255
SPLITS = ("train", "val")

# Synthetic class -> Cityscapes trainId (road, person, vegetation, car, traffic light); see the table above.
CITYSCAPES_TRAIN_IDS = (0, 11, 8, 13, 6)
CITYSCAPES_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
CITYSCAPES_FRAME = 19  # gtFine frames are the 20th frame of each snippet: <city>_<seq>_000019
LABEL_KINDS = ("labelIds", "labelTrainIds", "color")


REGIONS_PER_SIDE = 4  # grid cells along the side of a square image of the same area; legend: 2x2 of them
MEMBER_DISTANCE = 0.45  # min distance of a member centre from every legend centre, in longer image sides
TEXTURE_ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)  # stripe angle of each texture
STRIPE_PERIOD = 8.0  # pixels at 128x128 (scaled with sqrt(H * W))
GREY_LO, GREY_HI = 0.12, 0.88  # stripe colours of members
OUTLINE = 0.05  # intensity of the region outlines
# Ink of the keys' stripes per class (RGB in [0, 1]); row 0 (background) is unused.
INK = np.array(
    [[0.5, 0.5, 0.5], [0.9, 0.15, 0.15], [0.15, 0.8, 0.15], [0.2, 0.35, 0.95], [0.95, 0.85, 0.1]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image with its label and the ground truth of how it was made.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) uint8 class ids in [0, num_classes) or ``IGNORE_INDEX``.
        region: (H, W) int16 Voronoi region id.
        group: (H, W) int16 group of key and member regions; -1 on background.
        texture: (H, W) int16 index into ``TEXTURE_ANGLES`` of key and member regions (the same local
            appearance in every image); -1 on background.
        key: (H, W) bool, True on the legend's keys.
    """

    image: np.ndarray
    mask: np.ndarray
    region: np.ndarray
    group: np.ndarray
    texture: np.ndarray
    key: np.ndarray


def check_difficulty(difficulty: float) -> None:
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty={difficulty} must be a float in [0, 1]")


def check_groups(groups: int) -> None:
    if not 1 <= groups <= NUM_FOREGROUND:
        raise ValueError(f"groups={groups} must be an int in [1, {NUM_FOREGROUND}] (legend entries per image)")


def image_shape(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from one side (square) or a (height, width) pair."""
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def check_image_size(name: str, size: int) -> None:
    if size < 32 or size % 8 != 0:
        raise ValueError(f"{name}={size} must be a multiple of 8 and >= 32 (the network works at output stride 8)")


def _voronoi(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Jittered-grid Voronoi mosaic: region map (H, W), grid cells (R, 2), centres (R, 2) as (y, x), gap (H, W).

    ``gap`` = distance to the second-nearest centre minus distance to the nearest: small on boundaries.
    """
    side = math.sqrt(height * width)  # the side of a square image of the same area
    rows = max(2, round(REGIONS_PER_SIDE * height / side))
    cols = max(2, round(REGIONS_PER_SIDE * width / side))
    cell = np.array([height / rows, width / cols])
    grid = np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    centres = ((grid + 0.5 + rng.uniform(-0.3, 0.3, size=grid.shape)) * cell).astype(np.float32)  # (R, 2)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    region = np.zeros((height, width), dtype=np.int16)
    near1 = np.full((height, width), np.inf, dtype=np.float32)  # squared distance to the nearest centre
    near2 = np.full((height, width), np.inf, dtype=np.float32)  # ... and to the second-nearest
    for r, (cy, cx) in enumerate(centres):  # a loop over regions keeps memory at a few (H, W) maps
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2  # (H, W)
        closer = d2 < near1
        near2 = np.where(closer, near1, np.minimum(near2, d2))
        near1 = np.where(closer, d2, near1)
        region[closer] = r
    return region, grid, centres, np.sqrt(near2) - np.sqrt(near1)


def generate_sample(
    seed: int,
    index: int,
    split: str = "train",
    height: int = 128,
    width: int = 128,
    difficulty: float = 0.5,
    groups: int = 1,
) -> SyntheticSample:
    """Generate image ``index`` of ``split``; a pure function of its arguments (see the module docstring).

    Args:
        seed: dataset seed (>= 0).
        index: image index within the split (>= 0).
        split: "train" or "val"; the splits draw from disjoint random streams.
        height: image height in pixels.
        width: image width in pixels.
        difficulty: in [0, 1]: lower stripe contrast and ink saturation, angle jitter, more noise.
        groups: legend entries (texture -> class) per image, 1 to 4.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    check_difficulty(difficulty)
    check_groups(groups)
    d = float(difficulty)
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    side = math.sqrt(height * width)  # the side of a square image of the same area
    scale = side / 128.0

    # Layout: legend = the 2x2 block of grid cells in a random corner; members = regions far from it.
    region, grid, centres, gap = _voronoi(rng, height, width)
    num_regions = len(centres)
    corner = np.array([rng.integers(0, 2), rng.integers(0, 2)]) * (grid.max(axis=0) - 1)  # its top-left cell
    in_legend = np.all((grid >= corner) & (grid <= corner + 1), axis=1)  # (R,)
    distance = np.linalg.norm(centres[:, None] - centres[None, in_legend], axis=-1).min(axis=1)  # (R,)
    is_member = distance >= MEMBER_DISTANCE * max(height, width)
    keys = rng.permutation(np.flatnonzero(in_legend))[:groups]  # keys[g]: the key region of group g
    is_key = np.zeros(num_regions, dtype=bool)
    is_key[keys] = True
    group = np.full(num_regions, -1, dtype=np.int16)
    group[keys] = np.arange(groups)
    group[is_member] = rng.integers(0, groups, size=int(is_member.sum()))
    group_class = rng.permutation(NUM_FOREGROUND)[:groups] + 1  # distinct classes
    group_texture = rng.permutation(len(TEXTURE_ANGLES))[:groups]  # distinct textures

    # Stripes at the group's angle (jittered per region with difficulty): inked on keys, grey on members.
    g = np.maximum(group, 0)
    angle = np.asarray(TEXTURE_ANGLES)[group_texture[g]] + rng.uniform(-1, 1, num_regions) * d * math.pi / 16
    k = 2 * math.pi / max(4.0, STRIPE_PERIOD * scale)
    ky, kx = (k * np.sin(angle)).astype(np.float32), (k * np.cos(angle)).astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi, num_regions).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.clip(2 * np.sin(kx[region] * xx + ky[region] * yy + phase[region]), -1, 1)  # (H, W)
    shade = 0.5 + 0.5 * (0.8 - 0.3 * d) * stripes  # (H, W) in [0, 1]
    region_class = np.where(group >= 0, group_class[g], 0).astype(np.uint8)  # (R,)
    saturation = 1.0 - 0.5 * d
    hi = np.where(is_key[:, None], (1 - saturation) * GREY_HI + saturation * INK[region_class], GREY_HI)
    image = GREY_LO + (hi[region] - GREY_LO) * shade[..., None]  # (H, W, 3)

    blotches = cv2.resize(rng.normal(0, 0.1, size=(5, 5)).astype(np.float32), (width, height), cv2.INTER_CUBIC)
    level = rng.uniform(0.35, 0.6) * (1 + rng.uniform(-0.05, 0.05, size=3))
    background = level[None, None, :] + blotches[..., None]
    image = np.where((group < 0)[region][..., None], background, image).astype(np.float32)

    mask = region_class[region]  # (H, W)
    image[gap < 1.2 * max(scale, 0.5)] = OUTLINE
    mask[gap < 2.0 * max(scale, 0.5)] = IGNORE_INDEX

    for _ in range(rng.integers(0, 3)):  # void blobs of clutter
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(0.03, 0.06) * side
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[blob] = rng.uniform(0, 1, size=(int(blob.sum()), 3))
        mask[blob] = IGNORE_INDEX

    image += rng.normal(0, 0.02 + 0.1 * d, size=image.shape).astype(np.float32)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)

    texture = np.where(group >= 0, group_texture[g], -1).astype(np.int16)
    return SyntheticSample(
        image=image,
        mask=mask,
        region=region,
        group=group[region],
        texture=texture[region],
        key=is_key[region],
    )


def local_only_accuracy_bound(samples: Sequence[SyntheticSample]) -> float:
    """Best expected pixel accuracy of a model that cannot see the legend from a member region.

    Background and key pixels count as solved; a member pixel is right with the best prior,
    1 / (number of foreground classes). Ignore pixels do not count, as in training and evaluation.
    """
    labelled = member = 0
    for s in samples:
        valid = s.mask != IGNORE_INDEX
        labelled += int(valid.sum())
        member += int((valid & (s.group >= 0) & ~s.key).sum())
    return 1.0 - member / labelled * (1.0 - 1.0 / NUM_FOREGROUND)


def normalize(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ImageNet mean/std on [0, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


class SyntheticSegmentation(Dataset):
    """Map-style dataset over ``generate_sample``: item ``i`` is generated on the fly from (seed, split, i).

    Args:
        length: number of images.
        split: "train" or "val".
        image_size: (height, width), or the side of square images.
        difficulty: in [0, 1].
        seed: dataset seed.
        groups: legend entries per image, 1 to 4.
    """

    def __init__(
        self, length: int, split: str, image_size: int | tuple[int, int], difficulty: float, seed: int, groups: int = 1
    ) -> None:
        self.length = length
        self.split = split
        self.image_size = image_size
        self.difficulty = difficulty
        self.seed = seed
        self.groups = groups

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> SyntheticSample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a {self.split} set of {self.length} images")
        height, width = image_shape(self.image_size)
        return generate_sample(self.seed, index, self.split, height, width, self.difficulty, self.groups)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        sample = self.sample(index)
        return {
            "image": normalize(sample.image),
            "mask": torch.from_numpy(sample.mask.astype(np.int64)),
            "name": f"synthetic_{self.split}_{index:06d}",
        }


def write_cityscapes_layout(
    root: str | Path,
    num_train: int,
    num_val: int,
    image_size: int | tuple[int, int] = (64, 128),
    seed: int = 0,
    label_kinds: Sequence[str] = ("labelIds", "labelTrainIds"),
    difficulty: float = 0.5,
    groups: int = 1,
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
            sample = generate_sample(seed, index, split, height, width, difficulty, groups)
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


class SyntheticDataModule(SegmentationDataModule):
    """The default dataset: synthetic images whose labels need long-range context (module docstring).

    Items are dicts ``{"image": (3, H, W) float normalised with ImageNet mean/std, "mask": (H, W) int64
    in [0, num_classes) or 255, "name": str}``. Test = val set; predict = val images, or ``predict_dir``.

    Args:
        num_train: training images per epoch (generated on the fly, the same every epoch).
        num_val: validation images (also the test and predict set).
        image_size: side of the square images, or (height, width); each a multiple of 8, >= 32 (e.g. [1024, 2048]
            for whole-Cityscapes-size images).
        difficulty: in [0, 1]: lower stripe contrast and ink saturation, stripe-angle jitter, more noise.
        seed: the dataset seed; images, masks and the train shuffling order follow from it.
        batch_size: images per batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        groups: legend entries (texture -> class) per image, 1 to 4. 1: every member has the legend's
            class (a global cue); more: each member must find the entry of its own texture (a pairwise cue).
        pin_memory: DataLoader ``pin_memory``.
        predict_dir: a folder of images (PNG/JPEG, any size, subfolders read) for ``dnlseg predict`` instead
            of the val images.
    """

    def __init__(
        self,
        num_train: int = 512,
        num_val: int = 64,
        image_size: int | tuple[int, int] = 128,
        difficulty: float = 0.5,
        seed: int = 0,
        batch_size: int = 8,
        num_workers: int = 0,
        groups: int = 1,
        pin_memory: bool = False,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_train", num_train), ("num_val", num_val), ("batch_size", batch_size)):
            if value <= 0:
                raise ValueError(f"{name}={value} must be > 0")
        for side in image_shape(image_size):
            check_image_size("image_size", side)
        check_difficulty(difficulty)
        check_groups(groups)
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        if num_workers < 0:
            raise ValueError(f"num_workers={num_workers} must be >= 0")
        self.save_hyperparameters()
        self.num_train = num_train
        self.num_val = num_val
        self.image_size = image_size
        self.difficulty = difficulty
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.groups = groups
        self.pin_memory = pin_memory
        self.predict_dir = predict_dir
        self.num_classes: int = len(CLASS_NAMES)
        self.class_names: list[str] = list(CLASS_NAMES)
        self.ignore_index: int = IGNORE_INDEX
        self.palette: list[tuple[int, int, int]] = [tuple(trainId2label[t].color) for t in CITYSCAPES_TRAIN_IDS]
        self.train_set: SyntheticSegmentation | None = None
        self.val_set: SyntheticSegmentation | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            args = (self.image_size, self.difficulty, self.seed, self.groups)
            self.train_set = SyntheticSegmentation(self.num_train, "train", *args)
            self.val_set = SyntheticSegmentation(self.num_val, "val", *args)

    def _loader(self, dataset: SyntheticSegmentation, shuffle: bool) -> DataLoader:
        if not shuffle:
            return DataLoader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
        # Resumable mid-epoch; the order is a function of (seed, epoch), the same global batches on any device count.
        rank, world_size = trainer_rank_and_world_size(self)
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=train_sampler(dataset, self.seed, rank, world_size),
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is not None:
            return predict_folder_loader(self.predict_dir, self.num_workers, self.pin_memory)
        return self.val_dataloader()

    def write_cityscapes_layout(
        self, root: str | Path, label_kinds: Sequence[str] = ("labelIds", "labelTrainIds")
    ) -> Path:
        """This module's train and val images (its sizes, seed, difficulty, groups) in the Cityscapes layout.

        Args:
            root: output folder.
            label_kinds: subset of ("labelIds", "labelTrainIds", "color").
        """
        return write_cityscapes_layout(
            root, self.num_train, self.num_val, self.image_size, self.seed, label_kinds, self.difficulty, self.groups
        )
