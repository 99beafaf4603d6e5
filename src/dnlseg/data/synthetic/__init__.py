"""The built-in synthetic dataset, by job: ``scene`` generates an image and its label (and says what the task is),
``dataset`` serves them as a torch Dataset, ``datamodule`` as the default LightningDataModule, and
``cityscapes_layout`` writes them in the Cityscapes on-disk layout (fixtures for the real loaders)."""

from dnlseg.data.synthetic.cityscapes_layout import CITYSCAPES_TRAIN_IDS, write_cityscapes_layout
from dnlseg.data.synthetic.datamodule import SYNTHETIC_LOADER, SyntheticDataModule
from dnlseg.data.synthetic.dataset import SyntheticSegmentation, normalize
from dnlseg.data.synthetic.scene import (
    CLASS_NAMES,
    INK,
    NUM_FOREGROUND,
    TEXTURE_ANGLES,
    SyntheticSample,
    generate_sample,
    local_only_accuracy_bound,
)

__all__ = [
    "CITYSCAPES_TRAIN_IDS",
    "CLASS_NAMES",
    "INK",
    "NUM_FOREGROUND",
    "SYNTHETIC_LOADER",
    "TEXTURE_ANGLES",
    "SyntheticDataModule",
    "SyntheticSample",
    "SyntheticSegmentation",
    "generate_sample",
    "local_only_accuracy_bound",
    "normalize",
    "write_cityscapes_layout",
]
