"""VOCDataModule on a tiny Pascal VOC 2012 in the devkit layout (palette PNGs, JPEGs, split lists, mmseg's SBD aug):
classes and colours, the samples mmseg reads, label values, the checks before training, palette-PNG predictions."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dnlseg.callbacks import PredictionWriter
from dnlseg.data import LoaderOptions, TrainAugmentation, VOCDataModule
from dnlseg.data.voc import CLASS_NAMES, COLORMAP, PALETTE, voc_colormap
from dnlseg.errors import DatasetLayoutError
from tests.datasets import VOC_SPLITS, VOC_UNLISTED

SMALL = TrainAugmentation(crop_size=(32, 32), scale_base=(128, 48))
VOC2012 = "VOCdevkit/VOC2012"


def datamodule(root, batch_size=4, **kwargs):
    loader = LoaderOptions(batch_size=batch_size, num_workers=0)
    return VOCDataModule(str(root), **{"augmentation": SMALL, "loader": loader, "seed": 0, **kwargs})


def mmseg_voc():
    """mmsegmentation 1.2.2's own ``PascalVOCDataset``: the reference reader and metadata."""
    from mmseg_reference import import_mmseg

    import_mmseg()
    from mmseg.datasets import PascalVOCDataset

    return PascalVOCDataset


def mmseg_samples(voc2012, list_name, labels):
    """(image, label) paths of mmseg's ``PascalVOCDataset`` on the same files."""
    dataset = mmseg_voc()(
        data_root=str(voc2012),
        data_prefix={"img_path": "JPEGImages", "seg_map_path": labels},
        ann_file=f"ImageSets/Segmentation/{list_name}.txt",
        pipeline=[],
    )
    return [
        (dataset.get_data_info(i)["img_path"], dataset.get_data_info(i)["seg_map_path"]) for i in range(len(dataset))
    ]


def samples(dm, role):
    return [(str(p.image), str(p.label)) for p in dm.datasets[role].pairs]


def test_21_classes_with_the_names_and_colours_of_mmsegs_pascal_voc_dataset():
    dm = VOCDataModule("unused")
    assert dm.num_classes == 21 and dm.ignore_index == 255
    assert [list(c) for c in dm.palette] == mmseg_voc().METAINFO["palette"] == [list(c) for c in PALETTE]
    assert dm.class_names == list(mmseg_voc().METAINFO["classes"]) == list(CLASS_NAMES)
    # the devkit's colour map beyond the classes: 255 (void) is the cream of VOC's borders
    assert len(COLORMAP) == 256 and COLORMAP[255] == (224, 224, 192) and voc_colormap(22)[21] == (128, 64, 128)


def test_splits_are_the_ids_of_their_lists_with_the_files_mmseg_reads(voc_root):
    dm = datamodule(voc_root, train_split="train+aug")
    dm.setup("fit")
    voc2012 = voc_root / VOC2012
    train = mmseg_samples(voc2012, "train", "SegmentationClass")
    aug = mmseg_samples(voc2012, "aug", "SegmentationClassAug")  # mmseg's voc12aug: ConcatDataset([train, aug])
    assert samples(dm, "train") == train + aug and len(train) == 3 and len(aug) == 2
    assert samples(dm, "val") == mmseg_samples(voc2012, "val", "SegmentationClass")
    assert VOC_UNLISTED not in [p.name for p in dm.datasets["train"].pairs]  # JPEGImages is not a split
    trainaug = datamodule(voc_root, train_split="trainaug")  # the same ids, from the one list voc_aug.py writes
    trainaug.setup("fit")
    assert samples(trainaug, "train") == samples(dm, "train")


def test_labels_are_the_class_ids_of_the_palette_pngs_and_255_is_ignored(voc_root):
    dm = datamodule(voc_root)
    dm.setup("validate")
    for i, (h, w) in enumerate(VOC_SPLITS["val"].values()):
        pair = dm.datasets["val"].pairs[i]
        with Image.open(pair.label) as label:
            assert label.mode == "P"
            raw = np.asarray(label)
        item = dm.datasets["val"][i]
        assert item["image"].shape == (3, h, w) and item["mask"].dtype == torch.int64
        np.testing.assert_array_equal(item["mask"].numpy(), raw)  # identity: VOC's values are the train ids
        assert 255 in raw and set(np.unique(raw).tolist()) - {255} <= set(range(21))


def test_an_id_with_both_annotations_reads_vocs_own(voc_root, tmp_path):
    """SBD conversions that cover VOC's train ids too: mmseg trains those on SegmentationClass, and so does dnlseg."""
    root = shutil.copytree(voc_root, tmp_path / "voc")
    aug_copy = root / VOC2012 / "SegmentationClassAug/2007_000032.png"
    with Image.open(root / VOC2012 / "SegmentationClass/2007_000032.png") as label:
        Image.fromarray(np.zeros(np.asarray(label).shape, dtype=np.uint8)).save(aug_copy)
    dm = datamodule(root, train_split="trainaug")
    dm.setup("fit")
    labels = {p.name: p.label for p in dm.datasets["train"].pairs}
    assert labels["2007_000032"] == root / VOC2012 / "SegmentationClass/2007_000032.png"
    assert labels["2008_000002"] == root / VOC2012 / "SegmentationClassAug/2008_000002.png"


def test_train_batches_are_crops_of_train_and_aug_images(voc_root):
    dm = datamodule(voc_root, batch_size=5, train_split="train+aug")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["mask"].shape == (5, 32, 32)
    assert sorted(batch["name"]) == sorted([*VOC_SPLITS["train"], *VOC_SPLITS["aug"]])


@pytest.mark.parametrize("below", ["", "VOCdevkit", VOC2012])
def test_root_may_hold_vocdevkit_or_be_the_voc2012_folder(voc_root, below):
    dm = datamodule(voc_root / below if below else voc_root)
    dm.setup("validate")
    assert [p.name for p in dm.datasets["val"].pairs] == list(VOC_SPLITS["val"])


def test_root_from_the_environment_variable(voc_root, monkeypatch):
    monkeypatch.setenv("VOC_ROOT", str(voc_root))
    dm = VOCDataModule(augmentation=SMALL, loader=LoaderOptions(num_workers=0))
    dm.setup("validate")
    assert len(dm.datasets["val"]) == 2


def test_a_root_without_the_devkit_names_the_folders_it_looked_for(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"neither .*VOCdevkit/VOC2012 nor .*VOC2012 nor .*JPEGImages exists"):
        datamodule(tmp_path).setup("fit")


def test_a_missing_split_list_is_named_with_the_lists_there_in_one_line(voc_root, tmp_path):
    root = shutil.copytree(voc_root, tmp_path / "voc")
    (root / VOC2012 / "ImageSets/Segmentation/aug.txt").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        datamodule(root, train_split="train+aug").setup("fit")
    message = str(error.value)
    assert "\n" not in message and "no split list " in message and message.count("Segmentation/aug.txt") == 1
    assert "(lists there: train, trainaug, trainval, val;" in message and "voc_aug.py" in message


@pytest.mark.parametrize(
    ("removed", "split"),
    [
        ("JPEGImages/2007_000039.jpg", "train"),
        ("SegmentationClass/2007_000042.png", "val"),
        ("SegmentationClassAug/2008_000003.png", "train+aug"),
    ],
    ids=["image", "label", "aug-label"],
)
def test_an_id_without_its_image_or_label_fails_at_setup_naming_the_file_in_one_line(
    voc_root, tmp_path, removed, split
):
    root = shutil.copytree(voc_root, tmp_path / "voc")
    (root / VOC2012 / removed).unlink()
    with pytest.raises(DatasetLayoutError) as error:
        datamodule(root, train_split=split).setup("fit")
    message = str(error.value)
    assert "\n" not in message
    assert message.endswith(f"1 listed files do not exist: {root / VOC2012 / removed}")
    assert f"Pascal VOC {split} (" in message


def test_an_empty_list_and_a_line_that_is_no_id_are_refused_naming_the_list(voc_root, tmp_path):
    root = shutil.copytree(voc_root, tmp_path / "voc")
    lists = root / VOC2012 / "ImageSets/Segmentation"
    (lists / "val.txt").write_text("\n")
    with pytest.raises(DatasetLayoutError, match=r"the split list .*Segmentation/val.txt is empty"):
        datamodule(root).setup("validate")
    (lists / "val.txt").write_text("2007_000033\n/JPEGImages/2007_000042.jpg /SegmentationClassAug/2007_000042.png\n")
    with pytest.raises(DatasetLayoutError, match=r"line 2 of .*val.txt is not one sample id: '/JPEGImages/2007_"):
        datamodule(root).setup("validate")


@pytest.mark.parametrize("value", [21, 254])
def test_a_label_value_outside_0_to_20_and_255_fails_at_setup_naming_the_file(voc_root, tmp_path, value):
    root = shutil.copytree(voc_root, tmp_path / "voc")
    path = root / VOC2012 / "SegmentationClass/2007_000032.png"
    with Image.open(path) as label:
        array, palette = np.asarray(label).copy(), label.getpalette()
    array[2, 3] = value
    bad = Image.fromarray(array)
    bad.putpalette(palette)
    bad.save(path)
    with pytest.raises(DatasetLayoutError) as error:
        datamodule(root).setup("fit")
    message = str(error.value)
    assert message.startswith(f"Pascal VOC train ({root}): label {root / VOC2012}/SegmentationClass/2007_000032.png ")
    assert f"holds values [{value}] outside the dataset's label values (0..20, 255, see" in message
    assert "\n" not in message


def test_predict_split_reads_images_only(voc_root, tmp_path):
    root = shutil.copytree(voc_root, tmp_path / "voc")
    test_ids = ["2007_000033", VOC_UNLISTED]  # VOC's test release: images and a list, no labels
    (root / VOC2012 / "ImageSets/Segmentation/test.txt").write_text("\n".join(test_ids) + "\n")
    shutil.rmtree(root / VOC2012 / "SegmentationClass")
    dm = datamodule(root, predict_split="test")
    assert [batch["name"][0] for batch in dm.predict_dataloader()] == test_ids


def test_predicted_labels_are_palette_pngs_of_the_class_ids_as_voc_writes_its_own(voc_root, tmp_path):
    dm = datamodule(voc_root)
    trainer = type("Trainer", (), {"datamodule": dm, "log_dir": str(tmp_path)})()
    ids = torch.tensor([[[0, 15, 20], [255, 7, 1]]])  # background, person, tvmonitor; void, car, aeroplane
    batch = {"image": torch.zeros(1, 3, 2, 3), "name": ["2007_000033"]}
    PredictionWriter(color=False).write_on_batch_end(
        trainer, None, {"prediction": ids, "name": batch["name"]}, [0], batch, 0
    )
    with Image.open(tmp_path / "predictions/labels/2007_000033.png") as written:
        assert written.mode == "P"
        assert np.asarray(written).tolist() == ids[0].tolist()
        palette = np.asarray(written.getpalette(), dtype=np.uint8).reshape(-1, 3)
    assert len(palette) == 256 and palette[255].tolist() == [224, 224, 192]  # VOC's void colour
    assert (
        palette[:21].tolist() == mmseg_voc().METAINFO["palette"]
    )  # the class colours of VOC's files, as mmseg lists them
