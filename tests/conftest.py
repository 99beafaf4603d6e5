"""Fixtures shared across the test folders: tiny Cityscapes, ADE20K, Pascal VOC and own datasets in their real on-disk
formats."""

import os

import pytest

from tests.datasets import write_ade20k, write_cityscapes, write_image_mask, write_voc


@pytest.fixture(autouse=True)
def restored_environment():
    """Put ``os.environ`` back after each test: an in-process DDP trainer sets ``LOCAL_RANK``, ``MASTER_PORT`` and
    more there, and a later subprocess fit that inherited ``LOCAL_RANK`` would wait for workers nobody starts."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


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
def voc_root(tmp_path_factory):
    """VOCdevkit/VOC2012: 3 train + 2 val ids (palette PNGs), 2 SBD aug ids, the lists, an unlisted image. Read-only."""
    return write_voc(tmp_path_factory.mktemp("voc"))


@pytest.fixture(scope="session")
def lightning_checkpoint(tmp_path_factory):
    """A real Lightning checkpoint of a 1-step tiny fit, saved by ``AtomicCheckpointIO``. Read-only."""
    from tests.helpers import saved_lightning_checkpoint

    return saved_lightning_checkpoint(tmp_path_factory.mktemp("checkpoint") / "last.ckpt")


@pytest.fixture(scope="session")
def criss_cross_oracle():
    """mmcv 2.1.0's ``CrissCrossAttention`` from its own ``mmcv/ops/cc_attention.py``, which mmcv-lite lacks: pip
    downloads mmcv's source distribution once into the cache folder (``mmseg_reference.fetch_cc_attention``). A
    machine that cannot reach the package registry gets an error here, not a skipped test."""
    from mmseg_reference import criss_cross_attention

    return criss_cross_attention()
