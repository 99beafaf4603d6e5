"""Datasets as LightningDataModules: the built-in synthetic one, Cityscapes, ADE20K, Pascal VOC and your own; their
transforms and the options they share (``LoaderOptions``, ``SetupChecks``, ``TrainAugmentation``)."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is imported: no network call

from dnlseg.data.ade20k import ADE20KDataModule  # noqa: E402
from dnlseg.data.base import SegmentationDataModule  # noqa: E402
from dnlseg.data.cityscapes import CityscapesDataModule, prepare_cityscapes  # noqa: E402
from dnlseg.data.folder import (  # noqa: E402
    FilePair,
    FolderDataModule,
    SegmentationFiles,
    SetupChecks,
    image_folder_pairs,
    predict_folder_loader,
)
from dnlseg.data.image_mask import ImageMaskDataModule, SegmentationClass  # noqa: E402
from dnlseg.data.loaders import LoaderOptions  # noqa: E402
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
from dnlseg.data.voc import VOCDataModule  # noqa: E402

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ADE20KDataModule",
    "CityscapesDataModule",
    "FilePair",
    "FolderDataModule",
    "ImageMaskDataModule",
    "LoaderOptions",
    "ResumableDataLoader",
    "SegmentationClass",
    "SegmentationDataModule",
    "SegmentationFiles",
    "SetupChecks",
    "SyntheticDataModule",
    "SyntheticSample",
    "SyntheticSegmentation",
    "TrainAugmentation",
    "VOCDataModule",
    "generate_sample",
    "image_folder_pairs",
    "local_only_accuracy_bound",
    "prepare_cityscapes",
    "init_worker",
    "predict_folder_loader",
    "train_transform",
    "write_cityscapes_layout",
]
