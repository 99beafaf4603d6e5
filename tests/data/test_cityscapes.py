"""CityscapesDataModule on a tiny dataset in the official layout: items, label mapping, preparation, bad input."""

import shutil

import lightning as L
import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label, trainId2label
from PIL import Image

from dnlseg.cli.lightning_cli import prepare
from dnlseg.data import CityscapesDataModule, LoaderOptions, TrainAugmentation
from dnlseg.data.cityscapes import LABEL_ID_TABLE
from dnlseg.errors import CorruptFileError, DatasetLayoutError
from tests.datasets import write_cityscapes

SMALL = TrainAugmentation(crop_size=(32, 64), scale_base=(128, 64))


def datamodule(root, batch_size=2, **kwargs):
    kwargs = {"augmentation": SMALL, "loader": LoaderOptions(batch_size=batch_size, num_workers=0), "seed": 0, **kwargs}
    return CityscapesDataModule(str(root), **kwargs)


def copy_of(root, tmp_path):
    return shutil.copytree(root, tmp_path / "cityscapes")


def test_train_items_are_crops_and_val_items_full_resolution_images_with_labels(cityscapes_root):
    dm = datamodule(cityscapes_root, batch_size=2)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 3, 32, 64) and train["mask"].shape == (2, 32, 64)
    assert train["mask"].dtype == torch.int64
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 64, 128) and val["mask"].shape == (1, 64, 128)
    assert val["name"] == ["frankfurt_000000_000019"]
    assert set(val["mask"].unique().tolist()) <= {*range(19), 255}


def test_training_batches_repeat_from_the_run_seed(cityscapes_root):
    def first_batch(seed):
        L.seed_everything(seed)
        loader = LoaderOptions(num_workers=0, batch_size=2)
        dm = CityscapesDataModule(str(cityscapes_root), augmentation=SMALL, loader=loader)  # seed: null
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(5), first_batch(5), first_batch(6)
    assert a["name"] == b["name"] and torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])


def test_class_names_and_palette_are_cityscapes_train_classes():
    dm = CityscapesDataModule("unused")
    assert dm.num_classes == 19 and dm.ignore_index == 255
    assert dm.class_names[:3] == ["road", "sidewalk", "building"] and dm.class_names[-1] == "bicycle"
    assert dm.palette[0] == (128, 64, 128) and dm.palette[13] == trainId2label[13].color


def test_label_ids_are_mapped_to_the_same_train_ids_as_the_label_train_id_files(cityscapes_root, tmp_path):
    only_label_ids = write_cityscapes(tmp_path / "ids", label_kinds=("labelIds",))
    a, b = datamodule(cityscapes_root), datamodule(only_label_ids)
    a.setup("validate"), b.setup("validate")
    assert all(p.label.name.endswith("labelTrainIds.png") for p in a.datasets["val"].pairs)
    assert all(p.label.name.endswith("_labelIds.png") for p in b.datasets["val"].pairs)
    for x, y in zip(a.datasets["val"], b.datasets["val"], strict=True):
        assert torch.equal(x["mask"], y["mask"]) and torch.equal(x["image"], y["image"])


def test_label_id_table_follows_cityscapesscripts():
    for label_id in range(34):
        train_id = id2label[label_id].trainId
        assert LABEL_ID_TABLE[label_id] == (train_id if 0 <= train_id < 19 else 255)
    assert (LABEL_ID_TABLE[34:] == -1).all()  # not a Cityscapes id


def test_predictions_are_encoded_as_label_ids_and_map_back():
    dm = CityscapesDataModule("unused")
    train_ids = np.arange(19, dtype=np.int64).reshape(1, 19)
    label_ids = dm.encode_prediction(train_ids)
    assert label_ids.dtype == np.uint8
    assert label_ids.tolist()[0] == [trainId2label[t].id for t in range(19)]
    np.testing.assert_array_equal(LABEL_ID_TABLE[label_ids], train_ids)


def test_prepare_writes_train_id_files_equal_to_the_official_ones(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    official = {p.name: np.asarray(Image.open(p)) for p in root.glob("gtFine/*/*/*_labelTrainIds.png")}
    for p in root.glob("gtFine/*/*/*_labelTrainIds.png"):
        p.unlink()
    prepare(["cityscapes", "--root", str(root)])
    written = {p.name: np.asarray(Image.open(p)) for p in root.glob("gtFine/*/*/*_labelTrainIds.png")}
    assert written.keys() == official.keys() and len(written) == 6
    for name, array in official.items():
        np.testing.assert_array_equal(written[name], array)


def test_root_falls_back_to_the_environment_variable(cityscapes_root, monkeypatch):
    monkeypatch.setenv("CITYSCAPES_ROOT", str(cityscapes_root))
    dm = CityscapesDataModule(augmentation=SMALL, loader=LoaderOptions(num_workers=0))
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 2


def test_no_root_and_no_environment_variable_names_both(monkeypatch):
    monkeypatch.delenv("CITYSCAPES_ROOT", raising=False)
    with pytest.raises(DatasetLayoutError, match=r"--data.init_args.root.*CITYSCAPES_ROOT"):
        CityscapesDataModule().setup("fit")


def test_missing_root_names_the_path_and_the_layout(tmp_path):
    with pytest.raises(
        DatasetLayoutError, match=rf"(?s){tmp_path / 'nowhere'} does not exist.*leftImg8bit/<split>/<city>"
    ):
        datamodule(tmp_path / "nowhere").setup("fit")


def test_wrong_layout_names_the_missing_folder(tmp_path):
    (tmp_path / "cityscapes" / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match=r"no folder .*leftImg8bit/train; expected"):
        datamodule(tmp_path / "cityscapes").setup("fit")


def test_images_directly_in_the_split_folder_are_an_empty_split(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    for p in (root / "leftImg8bit" / "val").glob("*/*.png"):
        p.rename(root / "leftImg8bit" / "val" / p.name)  # no <city>/ folder
    with pytest.raises(DatasetLayoutError, match=r"no images \*/\*_leftImg8bit.png in .*val \(empty split\)"):
        datamodule(root).setup("validate")


def test_images_without_labels_and_labels_without_images_are_listed(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    for p in root.glob("gtFine/train/aachen/aachen_000000_000019_gtFine_*.png"):
        p.unlink()
    (root / "leftImg8bit/train/bochum/bochum_000001_000019_leftImg8bit.png").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        datamodule(root).setup("fit")
    message = str(error.value)
    assert "1 images without labels and 1 labels without images" in message
    assert "image without label: " in message and "aachen_000000_000019_leftImg8bit.png" in message
    assert "label without image: " in message and "bochum_000001_000019_gtFine_labelTrainIds.png" in message


def test_image_label_size_mismatch_fails_at_setup_naming_both_files(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    label = root / "gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(label)
    with pytest.raises(
        DatasetLayoutError, match=r"size mismatch: image .*frankfurt_000001_000019_leftImg8bit.png is 128x64"
    ):
        datamodule(root).setup("validate")


@pytest.mark.parametrize("kind, value, valid", [("labelTrainIds", 19, "0..18, 255"), ("labelIds", 40, "0..33")])
def test_label_values_outside_the_classes_fail_at_setup_naming_the_file_and_the_valid_values(
    cityscapes_root, tmp_path, kind, value, valid
):
    root = copy_of(cityscapes_root, tmp_path)
    if kind == "labelIds":
        for p in root.glob("gtFine/*/*/*_labelTrainIds.png"):
            p.unlink()
    label = root / f"gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_{kind}.png"
    array = np.asarray(Image.open(label)).copy()
    array[0, :3] = value
    Image.fromarray(array).save(label)
    with pytest.raises(
        DatasetLayoutError,
        match=rf"frankfurt_000000_000019_gtFine_{kind}.png holds values \[{value}\] outside .*\({valid}, see",
    ):
        datamodule(root).setup("validate")


def test_ignore_value_255_is_a_valid_train_id(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    label = root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelTrainIds.png"
    Image.fromarray(np.full((64, 128), 255, np.uint8)).save(label)
    dm = datamodule(root)
    dm.setup("validate")
    assert (dm.datasets["val"][0]["mask"] == 255).all()


def test_a_corrupt_image_found_mid_epoch_raises_naming_the_file(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    image = root / "leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png"
    image.write_bytes(image.read_bytes()[:200])  # the header (size) is intact, the pixel data is not
    dm = datamodule(root, batch_size=1)
    dm.setup("fit")  # setup reads image headers only
    with pytest.raises(CorruptFileError, match="bochum_000000_000019_leftImg8bit.png"):
        for _ in dm.train_dataloader():
            pass


def test_a_corrupt_label_is_found_at_setup(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    label = root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png"
    label.write_bytes(label.read_bytes()[:100])
    with pytest.raises(DatasetLayoutError, match=r"cannot decode label .*aachen_000001_000019_gtFine_labelTrainIds"):
        datamodule(root).setup("fit")


def test_predict_split_needs_no_labels(cityscapes_root, tmp_path):
    root = copy_of(cityscapes_root, tmp_path)
    shutil.copytree(root / "leftImg8bit/val", root / "leftImg8bit/test")  # the test split: images only here
    dm = datamodule(root, predict_split="test")
    batch = next(iter(dm.predict_dataloader()))
    assert batch["image"].shape == (1, 3, 64, 128) and "mask" not in batch
