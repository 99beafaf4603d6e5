"""Fixtures shared across the test folders: tiny Cityscapes and ADE20K datasets in their real on-disk formats."""

import pytest

from tests.datasets import write_ade20k, write_cityscapes, write_image_mask


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    """4 train + 2 val 64x128 images, gtFine labelIds and labelTrainIds. Read-only: copy it to modify."""
    return write_cityscapes(tmp_path_factory.mktemp("cityscapes"), label_kinds=("labelIds", "labelTrainIds"))


@pytest.fixture(scope="session")
def ade20k_root(tmp_path_factory):
    """4 training + 2 validation JPEGs of different sizes with 0..150 annotations. Read-only."""
    return write_ade20k(tmp_path_factory.mktemp("ade20k"))


@pytest.fixture(scope="session")
def image_mask_root(tmp_path_factory):
    """An own dataset (ImageMaskDataModule layout): 4 train + 2 val images, masks, classes.yaml. Read-only."""
    return write_image_mask(tmp_path_factory.mktemp("own_data"))


@pytest.fixture(scope="session")
def criss_cross_oracle():
    """mmcv 2.1.0's ``CrissCrossAttention`` from its own ``mmcv/ops/cc_attention.py``, which mmcv-lite lacks: pip
    downloads mmcv's source distribution once into the cache folder (``mmseg_reference.fetch_cc_attention``). A
    machine that cannot reach the package registry gets an error here, not a skipped test."""
    from mmseg_reference import criss_cross_attention

    return criss_cross_attention()
