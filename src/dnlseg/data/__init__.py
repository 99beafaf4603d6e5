"""Datasets as LightningDataModules: the built-in synthetic one, Cityscapes, ADE20K and your own; their transforms."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is imported: no network call

from dnlseg.data.ade20k import ADE20KDataModule  # noqa: E402
from dnlseg.data.base import SegmentationDataModule  # noqa: E402
from dnlseg.data.cityscapes import CityscapesDataModule, prepare_cityscapes  # noqa: E402
from dnlseg.data.folder import (  # noqa: E402
    CorruptFileError,
    DatasetLayoutError,
    FilePair,
    FolderDataModule,
    SegmentationFiles,
    image_folder_pairs,
    predict_folder_loader,
)
from dnlseg.data.image_mask import ImageMaskDataModule, SegmentationClass  # noqa: E402
from dnlseg.data.resumable import ResumableDataLoader  # noqa: E402
from dnlseg.data.synthetic import (  # noqa: E402
    SyntheticDataModule,
    SyntheticSample,
    SyntheticSegmentation,
    generate_sample,
    local_only_accuracy_bound,
    write_cityscapes_layout,
)
from dnlseg.data.transforms import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainAugmentation,
    init_worker,
    train_transform,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ADE20KDataModule",
    "CityscapesDataModule",
    "CorruptFileError",
    "DatasetLayoutError",
    "FilePair",
    "FolderDataModule",
    "ImageMaskDataModule",
    "ResumableDataLoader",
    "SegmentationClass",
    "SegmentationDataModule",
    "SegmentationFiles",
    "SyntheticDataModule",
    "SyntheticSample",
    "SyntheticSegmentation",
    "TrainAugmentation",
    "generate_sample",
    "image_folder_pairs",
    "local_only_accuracy_bound",
    "prepare_cityscapes",
    "init_worker",
    "predict_folder_loader",
    "train_transform",
    "write_cityscapes_layout",
]
