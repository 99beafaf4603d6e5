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

Four options change where the information lies (the ablation's settings, ``configs/synthetic/ablation/``):

- ``texture_levels=True``: each texture also has its own brightness (``TEXTURE_LEVELS``: the stripes' light
  level, on keys and members alike), an easy local cue for the pairwise match "same texture as that key" with
  ``groups >= 2``. Which class a texture means is still redrawn per image. (Measured: within 1500 CPU steps at
  64 px no head learned the match with or without it, experiments/ablation/README.md.)
- ``random_textures=True``: each image draws its own textures (the four angles turned by one random angle in
  [0, 45) degrees; with ``texture_levels``, each group's level uniform in ``RANDOM_LEVELS``). With fixed textures a
  head can pool the legend into a fixed code "texture t has ink c" (4 x 4 conjunctions) and read it with the
  member's own texture, with no pairwise match; with a continuum of textures only a comparison of the member's
  texture with each key's (a pairwise term) stays simple.
- ``ink="outline"``: the keys are striped in grey like members, and their class ink is drawn only on a thin rim
  (``RIM_WIDTH``) along the inside of the key's boundary: the legend's information lies on region boundaries, so
  a unary term that singles it out attends to boundaries (the DNL paper's claim about its unary term).
- ``boundary_void=False``: no void band along region boundaries: labels reach the boundary, and label changes
  (what the boundary band of ``AttentionConsistency`` is made of) are only the changes of class, not every
  outline between two background regions. The 0-2 clutter blobs stay void.

Difficulty ``d`` in [0, 1] sets the stripe contrast (0.8 - 0.3d), the ink saturation (1 - 0.5d), a
per-region jitter of the stripe angle (up to 11d degrees) and the pixel noise (std 0.02 + 0.1d on
[0, 1] intensities).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from dnlseg.data.base import IGNORE_INDEX

CLASS_NAMES = ("background", "red", "green", "blue", "yellow")
NUM_FOREGROUND = len(CLASS_NAMES) - 1
SPLITS = ("train", "val")

REGIONS_PER_SIDE = 4  # grid cells along the side of a square image of the same area; legend: 2x2 of them
MEMBER_DISTANCE = 0.45  # min distance of a member centre from every legend centre, in longer image sides
TEXTURE_ANGLES = (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4)  # stripe angle of each texture
STRIPE_PERIOD = 8.0  # pixels at 128x128 (scaled with sqrt(H * W))
GREY_LO, GREY_HI = 0.12, 0.88  # stripe colours of members
OUTLINE = 0.05  # intensity of the region outlines
TEXTURE_LEVELS = (0.45, 0.65, 0.85, 1.0)  # texture_levels=True: light level of each texture's stripes (x GREY_HI)
RANDOM_LEVELS = (0.45, 1.0)  # random_textures=True: range of the levels drawn per image and group
RIM_WIDTH = 2.0  # ink="outline": width of the inked rim inside a key's boundary, pixels (scaled up above 128x128)
INK_MODES = ("stripes", "outline")
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
            appearance in every image, unless ``random_textures`` turns this image's angles); -1 on background.
        key: (H, W) bool, True on the legend's keys.
    """

    image: np.ndarray
    mask: np.ndarray
    region: np.ndarray
    group: np.ndarray
    texture: np.ndarray
    key: np.ndarray

    @property
    def member(self) -> np.ndarray:
        """(H, W) bool, True on member regions (grouped, not a key): the pixels whose class needs the legend."""
        return (self.group >= 0) & ~self.key


def check_difficulty(difficulty: float) -> None:
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty={difficulty} must be a float in [0, 1]")


def check_groups(groups: int) -> None:
    if not 1 <= groups <= NUM_FOREGROUND:
        raise ValueError(f"groups={groups} must be an int in [1, {NUM_FOREGROUND}] (legend entries per image)")


def check_ink(ink: str) -> None:
    if ink not in INK_MODES:
        raise ValueError(f"ink={ink!r} must be one of {INK_MODES}")


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
    *,
    texture_levels: bool = False,
    random_textures: bool = False,
    ink: str = "stripes",
    boundary_void: bool = True,
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
        texture_levels: each texture also has its own stripe brightness (``TEXTURE_LEVELS``).
        random_textures: each image draws its own textures: the angles rotated by one random angle in
            [0, 45) degrees, the levels (with ``texture_levels``) uniform in ``RANDOM_LEVELS`` per group.
        ink: "stripes" (the keys' stripes are inked) or "outline" (grey keys, ink on a rim inside their boundary).
        boundary_void: label a band along every region boundary void (``IGNORE_INDEX``).
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    check_difficulty(difficulty)
    check_groups(groups)
    check_ink(ink)
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
    group_angle = np.asarray(TEXTURE_ANGLES)[group_texture]  # (G,)
    group_level = np.asarray(TEXTURE_LEVELS)[group_texture]  # (G,)
    if random_textures:  # this image's own textures: still 45 degrees apart, levels independent
        group_angle = group_angle + rng.uniform(0, math.pi / 4)
        group_level = rng.uniform(*RANDOM_LEVELS, size=groups)

    # Stripes at the group's angle (jittered per region with difficulty): inked on keys, grey on members.
    g = np.maximum(group, 0)
    angle = group_angle[g] + rng.uniform(-1, 1, num_regions) * d * math.pi / 16
    k = 2 * math.pi / max(4.0, STRIPE_PERIOD * scale)
    ky, kx = (k * np.sin(angle)).astype(np.float32), (k * np.cos(angle)).astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi, num_regions).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.clip(2 * np.sin(kx[region] * xx + ky[region] * yy + phase[region]), -1, 1)  # (H, W)
    shade = 0.5 + 0.5 * (0.8 - 0.3 * d) * stripes  # (H, W) in [0, 1]
    region_class = np.where(group >= 0, group_class[g], 0).astype(np.uint8)  # (R,)
    saturation = 1.0 - 0.5 * d
    inked = (1 - saturation) * GREY_HI + saturation * INK[region_class]  # (R, 3) light colour of inked stripes
    hi = np.where((is_key & (ink == "stripes"))[:, None], inked, GREY_HI)  # (R, 3)
    if texture_levels:
        hi = hi * np.where(group >= 0, group_level[g], 1.0)[:, None]
    image = GREY_LO + (hi[region] - GREY_LO) * shade[..., None]  # (H, W, 3)
    if ink == "outline":  # the rim: from the dark outline to RIM_WIDTH px further inside (gap ~ 2 x distance)
        rim = is_key[region] & (gap < 1.2 * max(scale, 0.5) + 2 * RIM_WIDTH * max(scale, 1.0))  # (H, W)
        image[rim] = inked[region[rim]]

    # Bilinear: what the data has always been made with (cv2.INTER_CUBIC was passed as ``dst``, which cv2 ignores).
    noise = rng.normal(0, 0.1, size=(5, 5)).astype(np.float32)
    blotches = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
    level = rng.uniform(0.35, 0.6) * (1 + rng.uniform(-0.05, 0.05, size=3))
    background = level[None, None, :] + blotches[..., None]
    image = np.where((group < 0)[region][..., None], background, image).astype(np.float32)

    mask = region_class[region]  # (H, W)
    image[gap < 1.2 * max(scale, 0.5)] = OUTLINE
    if boundary_void:
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
        member += int((valid & s.member).sum())
    return 1.0 - member / labelled * (1.0 - 1.0 / NUM_FOREGROUND)
