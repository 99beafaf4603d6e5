"""The synthetic images as a torch Dataset: item ``i`` of a split is generated on the fly from (seed, split, i)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from dnlseg.data.synthetic.scene import SyntheticSample, generate_sample, image_shape
from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD


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
        scene: keyword options of ``generate_sample`` (``texture_levels``, ``random_textures``, ``ink``,
            ``boundary_void``).
    """

    def __init__(
        self,
        length: int,
        split: str,
        image_size: int | tuple[int, int],
        difficulty: float,
        seed: int,
        groups: int = 1,
        **scene,
    ) -> None:
        self.length = length
        self.split = split
        self.image_size = image_size
        self.difficulty = difficulty
        self.seed = seed
        self.groups = groups
        self.scene = scene

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> SyntheticSample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a {self.split} set of {self.length} images")
        height, width = image_shape(self.image_size)
        return generate_sample(self.seed, index, self.split, height, width, self.difficulty, self.groups, **self.scene)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        sample = self.sample(index)
        return {
            "image": normalize(sample.image),
            "mask": torch.from_numpy(sample.mask.astype(np.int64)),
            "name": f"synthetic_{self.split}_{index:06d}",
        }
