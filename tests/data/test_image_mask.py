"""ImageMaskDataModule on a tiny own dataset: class list, mask values, subfolders, the shared checks and encoding."""

import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from dnlseg.data import ImageMaskDataModule, LoaderOptions, TrainAugmentation
from dnlseg.errors import DatasetLayoutError
from tests.datasets import OWN_CLASSES, OWN_SIZES

SMALL = TrainAugmentation(crop_size=(32, 32))


def datamodule(root, batch_size=4, **kwargs):
    loader = LoaderOptions(batch_size=batch_size, num_workers=0)
    return ImageMaskDataModule(str(root), **{"augmentation": SMALL, "loader": loader, "seed": 0, **kwargs})


def test_classes_come_from_classes_yaml_with_names_colours_and_mask_values(image_mask_root):
    dm = datamodule(image_mask_root)
    assert dm.num_classes == 5 and dm.class_names == [c["name"] for c in OWN_CLASSES]
    assert dm.palette[4] == (250, 170, 30) and dm.ignore_index == 255
    # train id -> mask value: positions 0..3, then the explicit value 7
    assert dm.encode_prediction(np.array([[0, 1, 2, 3, 4]])).tolist() == [[0, 1, 2, 3, 7]]


def test_inline_classes_replace_the_file(image_mask_root):
    dm = datamodule(image_mask_root, classes=[{"name": "a", "color": [1, 2, 3]}, {"name": "b", "color": [4, 5, 6]}])
    assert dm.class_names == ["a", "b"] and dm.num_classes == 2


def test_masks_map_to_train_ids_and_names_keep_subfolders(image_mask_root):
    dm = datamodule(image_mask_root)
    dm.setup("validate")
    names = [pair.name for pair in dm.datasets["val"].pairs]
    assert names == ["0000", "site_b/0001"]
    for i, (h, w) in enumerate(OWN_SIZES["val"]):
        item = dm.datasets["val"][i]
        raw = np.asarray(Image.open(dm.datasets["val"].pairs[i].label))
        mask = item["mask"].numpy()
        assert mask.shape == (h, w) and item["image"].shape == (3, h, w)
        np.testing.assert_array_equal(mask[raw == 255], 255)
        np.testing.assert_array_equal(mask[raw == 7], 4)  # yellow's value 7 is train id 4
        np.testing.assert_array_equal(mask[raw < 4], raw[raw < 4])


def test_training_items_are_augmented_crops_of_png_and_jpeg_images(image_mask_root):
    dm = datamodule(image_mask_root, batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert {p.image.suffix for p in dm.datasets["train"].pairs} == {".png", ".jpg"}


def test_a_mask_value_outside_the_classes_fails_at_setup_naming_the_file_and_the_valid_values(
    image_mask_root, tmp_path
):
    root = shutil.copytree(image_mask_root, tmp_path / "own")
    mask = root / "masks/val/site_b/0001.png"
    array = np.asarray(Image.open(mask)).copy()
    array[3, 3] = 5
    Image.fromarray(array).save(mask)
    with pytest.raises(DatasetLayoutError, match=r"0001.png holds values \[5\] outside .*\(0..3, 7, 255,"):
        datamodule(root).setup("validate")


def test_an_image_without_mask_is_named(image_mask_root, tmp_path):
    root = shutil.copytree(image_mask_root, tmp_path / "own")
    (root / "masks/train/0002.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"image without label: .*images/train/0002.png"):
        datamodule(root).setup("fit")


def test_an_empty_split_and_a_missing_masks_folder_name_the_folder(image_mask_root, tmp_path):
    root = shutil.copytree(image_mask_root, tmp_path / "own")
    shutil.rmtree(root / "masks/val")
    with pytest.raises(DatasetLayoutError, match=r"no folder .*masks/val for the labels of .*images/val"):
        datamodule(root).setup("validate")
    shutil.rmtree(root / "images/val")
    (root / "images/val").mkdir()
    with pytest.raises(
        DatasetLayoutError, match=r"no images \*.png\|.jpg\|.jpeg \(subfolders read\) in .*images/val \(empty split\)"
    ):
        datamodule(root).setup("validate")


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ([], "the class list is empty"),
        ([{"name": "a", "color": [0, 0, 0]}, {"name": "a", "color": [1, 1, 1]}], "class names must be distinct"),
        ([{"name": "a", "color": [0, 0, 300]}], r"class 'a' has color \[0, 0, 300\]; expected \[r, g, b\] in 0..255"),
        ([{"name": "a", "color": [0, 0, 0], "value": 255}], "ignore_value=255 is also the value of a class"),
    ],
    ids=["empty", "duplicate-name", "colour-range", "value-is-ignore"],
)
def test_an_unusable_class_list_is_refused_naming_the_file(image_mask_root, tmp_path, classes, message):
    root = shutil.copytree(image_mask_root, tmp_path / "own")
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    with pytest.raises(DatasetLayoutError, match=message) as error:
        datamodule(root)
    assert "classes.yaml" in str(error.value)


def test_a_missing_class_list_says_where_it_is_expected(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"no class list .*classes.yaml: write one, or give `classes`"):
        datamodule(tmp_path)
