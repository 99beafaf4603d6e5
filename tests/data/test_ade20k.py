"""ADE20KDataModule on a tiny dataset in the ADEChallengeData2016 layout: classes, reduce-zero-label, bad input."""

import shutil

import numpy as np
import pytest
from PIL import Image

from dnlseg.data import ADE20KDataModule, LoaderOptions, TrainAugmentation
from dnlseg.data.ade20k import CLASS_NAMES
from dnlseg.errors import DatasetLayoutError
from tests.datasets import ADE_SIZES

SMALL = TrainAugmentation(crop_size=(32, 32), scale_base=(128, 64))


def datamodule(root, batch_size=4, **kwargs):
    loader = LoaderOptions(batch_size=batch_size, num_workers=0)
    return ADE20KDataModule(str(root), **{"augmentation": SMALL, "loader": loader, "seed": 0, **kwargs})


def test_150_official_class_names_in_mmsegmentation_order():
    assert len(CLASS_NAMES) == 150 and len(set(CLASS_NAMES)) == 150
    assert CLASS_NAMES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert CLASS_NAMES[12] == "person" and CLASS_NAMES[20] == "car" and CLASS_NAMES[44] == "chest of drawers"
    assert CLASS_NAMES[-3:] == ("glass", "clock", "flag")
    dm = ADE20KDataModule("unused")
    assert dm.num_classes == 150 and dm.ignore_index == 255 and len(set(dm.palette)) == 150


def test_label_zero_is_ignored_and_1_to_150_become_0_to_149(ade20k_root):
    dm = datamodule(ade20k_root)
    dm.setup("validate")
    pair = dm.datasets["val"].pairs[0]
    raw = np.asarray(Image.open(pair.label))
    mask = dm.datasets["val"][0]["mask"].numpy()
    np.testing.assert_array_equal(mask[raw == 0], 255)
    np.testing.assert_array_equal(mask[raw > 0], raw[raw > 0].astype(np.int64) - 1)
    assert dm.encode_prediction(np.array([[0, 149]])).tolist() == [[1, 150]]


def test_val_items_keep_each_image_size_and_train_items_are_crops(ade20k_root):
    dm = datamodule(ade20k_root, batch_size=2)
    dm.setup("fit")
    sizes = [tuple(batch["mask"].shape[-2:]) for batch in dm.val_dataloader()]
    assert sizes == ADE_SIZES["validation"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert batch["name"][0].startswith("ADE_train_")


def test_root_may_be_the_challenge_folder_itself(ade20k_root):
    dm = datamodule(ade20k_root / "ADEChallengeData2016")
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 2


def test_root_from_the_environment_variable(ade20k_root, monkeypatch):
    monkeypatch.setenv("ADE20K_ROOT", str(ade20k_root))
    dm = ADE20KDataModule(augmentation=SMALL, loader=LoaderOptions(num_workers=0))
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 2


def test_predict_dir_predicts_a_folder_of_images(ade20k_root):
    folder = ade20k_root / "ADEChallengeData2016/images/validation"
    dm = datamodule(ade20k_root, predict_dir=str(folder))
    batch = next(iter(dm.predict_dataloader()))
    assert batch["name"] == ["ADE_val_00000001"] and "mask" not in batch


def test_missing_layout_names_the_expected_folders(tmp_path):
    (tmp_path / "ade").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"neither .*ADEChallengeData2016 nor .*images exists"):
        datamodule(tmp_path / "ade").setup("fit")


def test_label_value_above_150_fails_at_setup_naming_the_file(ade20k_root, tmp_path):
    root = shutil.copytree(ade20k_root, tmp_path / "ade")
    label = root / "ADEChallengeData2016/annotations/training/ADE_train_00000002.png"
    array = np.asarray(Image.open(label)).copy()
    array[5, 5] = 151
    Image.fromarray(array).save(label)
    with pytest.raises(DatasetLayoutError, match=r"ADE_train_00000002.png holds values \[151\]"):
        datamodule(root).setup("fit")


def test_annotation_without_image_fails_at_setup(ade20k_root, tmp_path):
    root = shutil.copytree(ade20k_root, tmp_path / "ade")
    (root / "ADEChallengeData2016/images/validation/ADE_val_00000002.jpg").unlink()
    with pytest.raises(DatasetLayoutError, match=r"label without image: .*ADE_val_00000002.png"):
        datamodule(root).setup("validate")


def test_empty_split_fails_at_setup(ade20k_root, tmp_path):
    root = shutil.copytree(ade20k_root, tmp_path / "ade")
    for p in (root / "ADEChallengeData2016/images/training").iterdir():
        p.unlink()
    with pytest.raises(DatasetLayoutError, match=r"no images \*.jpg in .*images/training \(empty split\)"):
        datamodule(root).setup("fit")


def test_rgb_annotation_is_rejected_naming_the_file(ade20k_root, tmp_path):
    root = shutil.copytree(ade20k_root, tmp_path / "ade")
    label = root / "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"
    Image.open(label).convert("RGB").save(label)
    with pytest.raises(DatasetLayoutError, match=r"ADE_val_00000001.png has image mode 'RGB'; expected single-channel"):
        datamodule(root).setup("validate")
