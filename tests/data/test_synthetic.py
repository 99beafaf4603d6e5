"""The synthetic dataset is deterministic, well-formed, needs long-range context, and writes Cityscapes files."""

import cv2
import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label
from PIL import Image

from dnlseg.data import SyntheticDataModule, generate_sample, local_only_accuracy_bound, write_cityscapes_layout
from dnlseg.data.loaders import LoaderOptions
from dnlseg.data.synthetic import CITYSCAPES_TRAIN_IDS, INK
from tests.helpers import synthetic_loader

SIZE = 64


def samples(n, seed=0, difficulty=0.5, size=SIZE, groups=1):
    return [generate_sample(seed, i, "train", size, size, difficulty, groups) for i in range(n)]


def test_same_seed_gives_identical_images_and_masks_and_another_seed_does_not():
    a = SyntheticDataModule(num_train=4, num_val=2, image_size=SIZE, seed=3).train_dataloader().dataset
    b = SyntheticDataModule(num_train=4, num_val=2, image_size=SIZE, seed=3).train_dataloader().dataset
    c = SyntheticDataModule(num_train=4, num_val=2, image_size=SIZE, seed=4).train_dataloader().dataset
    for i in range(4):
        assert torch.equal(a[i]["image"], b[i]["image"])
        assert torch.equal(a[i]["mask"], b[i]["mask"])
        assert not torch.equal(a[i]["image"], c[i]["image"])
        assert not torch.equal(a[i]["mask"], c[i]["mask"])


def test_train_and_val_images_differ_and_images_differ_by_index():
    train = generate_sample(0, 0, "train", SIZE, SIZE)
    val = generate_sample(0, 0, "val", SIZE, SIZE)
    other = generate_sample(0, 1, "train", SIZE, SIZE)
    assert not np.array_equal(train.image, val.image)
    assert not np.array_equal(train.image, other.image)


def test_batches_have_documented_shapes_dtypes_and_value_ranges():
    dm = SyntheticDataModule(num_train=6, num_val=3, image_size=SIZE, loader=synthetic_loader(batch_size=4))
    assert (dm.num_classes, dm.ignore_index) == (5, 255)
    assert dm.class_names == ["background", "red", "green", "blue", "yellow"]
    assert len(dm.palette) == dm.num_classes and all(len(c) == 3 for c in dm.palette)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, SIZE, SIZE) and batch["mask"].dtype == torch.int64
    assert len(batch["name"]) == 4 and all(n.startswith("synthetic_train_") for n in batch["name"])
    values = set(batch["mask"].unique().tolist())
    assert values <= set(range(dm.num_classes)) | {255}
    # ImageNet normalisation of [0, 1] RGB: (0 - 0.485) / 0.229 = -2.12 ... (1 - 0.406) / 0.225 = 2.64
    assert -2.2 < batch["image"].min() < -1.5 and 1.5 < batch["image"].max() < 2.7
    val = list(dm.val_dataloader())
    assert [len(b["name"]) for b in val] == [3]
    assert val[0]["name"] == ["synthetic_val_000000", "synthetic_val_000001", "synthetic_val_000002"]
    assert next(iter(dm.test_dataloader()))["name"] == val[0]["name"]
    assert next(iter(dm.predict_dataloader()))["name"] == val[0]["name"]


def test_train_order_is_shuffled_reproducibly_from_the_seed():
    def order(seed):
        dm = SyntheticDataModule(
            num_train=16, num_val=1, image_size=32, seed=seed, loader=synthetic_loader(batch_size=16)
        )
        return next(iter(dm.train_dataloader()))["name"]

    assert order(0) == order(0)
    assert order(0) != sorted(order(0))
    assert order(0) != order(1)


def test_data_module_passes_groups_and_difficulty_to_its_images():
    dm = SyntheticDataModule(num_train=2, num_val=1, image_size=SIZE, difficulty=0.2, groups=3, seed=7)
    assert dm.hparams["groups"] == 3 and dm.hparams["difficulty"] == 0.2
    sample = dm.train_dataloader().dataset.sample(1)
    assert np.array_equal(sample.image, generate_sample(7, 1, "train", SIZE, SIZE, 0.2, 3).image)
    assert len(np.unique(sample.region[sample.key])) == 3


def test_items_do_not_depend_on_the_worker_process():
    dm = SyntheticDataModule(num_train=4, num_val=4, image_size=32, loader=synthetic_loader(batch_size=2))
    in_main = list(dm.val_dataloader())
    dm.loader = synthetic_loader(batch_size=2, num_workers=2)
    in_workers = list(dm.val_dataloader())
    for a, b in zip(in_main, in_workers, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_every_class_and_the_ignore_label_appear_in_a_few_images():
    data = samples(16)
    masks = np.stack([s.mask for s in data])
    counts = np.bincount(masks.ravel(), minlength=256)
    assert all(counts[c] > 0 for c in range(5))
    assert 0.03 < counts[255] / masks.size < 0.2
    assert all((s.mask == 255).any() for s in data)


def test_region_boundaries_are_void():
    for s in samples(4, size=128) + samples(4, size=32):
        labelled = s.mask != 255
        for axis in (0, 1):  # any two labelled neighbours lie in the same region
            a = [slice(None), slice(None)]
            b = [slice(None), slice(None)]
            a[axis], b[axis] = slice(1, None), slice(None, -1)
            both = labelled[tuple(a)] & labelled[tuple(b)]
            assert np.array_equal(s.region[tuple(a)][both], s.region[tuple(b)][both])


def member_pixels(sample):
    """Labelled pixels of member regions: their own appearance says "grey stripes at angle a", not the class."""
    return (sample.mask != 255) & (sample.group >= 0) & ~sample.key


def test_a_classifier_of_local_texture_is_at_chance_on_members_of_new_images():
    votes = np.zeros((4, 5), dtype=np.int64)  # (texture, class) pixel counts on members of one seed
    for s in samples(150):
        m = member_pixels(s)
        np.add.at(votes, (s.texture[m], s.mask[m]), 1)
    assert (votes[:, 1:] > 0).all() and (votes[:, 0] == 0).all()  # every texture means every class
    majority = votes.argmax(axis=1)
    correct = total = 0
    for s in samples(150, seed=1):  # held out
        m = member_pixels(s)
        correct += int((majority[s.texture[m]] == s.mask[m]).sum())
        total += int(m.sum())
    assert 0.18 < correct / total < 0.32  # chance: 1/4 foreground classes


@pytest.mark.parametrize("groups", [1, 2, 3, 4])
def test_legend_has_one_key_per_group_with_distinct_classes_and_textures(groups):
    for s in samples(10, groups=groups):
        key_regions = np.unique(s.region[s.key])
        assert len(key_regions) == groups
        key_class = [np.bincount(s.mask[(s.region == r) & (s.mask != 255)]).argmax() for r in key_regions]
        key_texture = [s.texture[s.region == r][0] for r in key_regions]
        assert len(set(key_class)) == len(set(key_texture)) == groups
        assert set(np.unique(s.mask[member_pixels(s)])) <= set(key_class)


def test_local_only_accuracy_bound_counts_member_pixels_at_chance():
    data = samples(40, size=128)
    members = sum(int(member_pixels(s).sum()) for s in data)
    labelled = sum(int((s.mask != 255).sum()) for s in data)
    bound = local_only_accuracy_bound(data)
    assert bound == pytest.approx(1 - 0.75 * members / labelled)
    assert 0.6 < bound < 0.8  # about 0.72


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_label_is_the_class_inked_on_the_distant_key_with_the_same_texture(difficulty, groups):
    ink = INK - INK.mean(axis=1, keepdims=True)
    for s in samples(8, difficulty=difficulty, size=128, groups=groups):
        for g in range(groups):
            key = (s.group == g) & s.key & (s.mask != 255)
            colour = s.image[key].astype(np.float64).mean(axis=0)
            inked_class = int(np.argmax(ink[1:] @ (colour - colour.mean()))) + 1  # read from the pixels
            members = (s.group == g) & ~s.key & (s.mask != 255)
            assert (s.mask[key] == inked_class).all() and (s.mask[members] == inked_class).all()
            assert (s.texture[members] == s.texture[key][0]).all()
            if members.any():  # a group may have no members
                assert np.ptp(s.image[members].astype(float).mean(axis=0)) < 10  # grey: no ink on members
        distance_to_legend = cv2.distanceTransform((~s.key).astype(np.uint8), cv2.DIST_L2, 5)
        assert np.median(distance_to_legend[member_pixels(s)]) > 32  # about half a 128 px image
        assert (s.mask[(s.group < 0) & (s.mask != 255)] == 0).all()  # the rest is background


def test_difficulty_pales_the_ink_and_adds_noise():
    def ink_saturation_and_noise(difficulty):
        saturation, noise = [], []
        for s in samples(10, difficulty=difficulty, size=128):
            saturation.append(np.ptp(s.image[s.key & (s.mask != 255)].mean(axis=0)))
            image = s.image.astype(np.float32)
            background = (s.group < 0) & (s.mask != 255)
            noise.append(np.abs(image - cv2.blur(image, (3, 3)))[background].mean())
        return np.mean(saturation), np.mean(noise)

    easy, hard = ink_saturation_and_noise(0.0), ink_saturation_and_noise(1.0)
    assert hard[0] < 0.7 * easy[0]
    assert hard[1] > 2 * easy[1]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"image_size": 100}, "image_size"),
        ({"image_size": 24}, "image_size"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"difficulty": -0.1}, "difficulty"),
        ({"seed": -1}, "seed"),
        ({"groups": 0}, "groups"),
        ({"groups": 5}, "groups"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SyntheticDataModule(**kwargs)


def test_write_cityscapes_layout_rejects_unknown_label_kinds(tmp_path):
    with pytest.raises(ValueError, match="label_kinds"):
        write_cityscapes_layout(tmp_path, 1, 1, label_kinds=("labelIds", "instanceIds"))


def test_cityscapes_layout_has_exact_file_names_modes_and_sizes(tmp_path):
    root = write_cityscapes_layout(tmp_path / "cs", num_train=3, num_val=2, image_size=(64, 128), seed=0)
    assert root == tmp_path / "cs"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    expected = []
    for split, stems in (
        ("train", ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019", "bochum/bochum_000000_000019"]),
        ("val", ["frankfurt/frankfurt_000000_000019", "frankfurt/frankfurt_000001_000019"]),
    ):
        for stem in stems:
            expected.append(f"leftImg8bit/{split}/{stem}_leftImg8bit.png")
            expected += [f"gtFine/{split}/{stem}_gtFine_{kind}.png" for kind in ("labelIds", "labelTrainIds")]
    assert files == sorted(expected)

    image = Image.open(root / "leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png")
    label_ids = Image.open(root / "gtFine/train/bochum/bochum_000000_000019_gtFine_labelIds.png")
    train_ids = Image.open(root / "gtFine/train/bochum/bochum_000000_000019_gtFine_labelTrainIds.png")
    assert (image.mode, label_ids.mode, train_ids.mode) == ("RGB", "L", "L")
    assert image.size == label_ids.size == train_ids.size == (128, 64)  # PIL size is (W, H)

    # bochum_000000 is train image 1: the same pixels as generate_sample, the labels mapped to Cityscapes
    sample = generate_sample(0, 1, "train", 64, 128)
    assert np.array_equal(np.asarray(image), sample.image)
    label_ids, train_ids = np.asarray(label_ids), np.asarray(train_ids)
    to_train_id = np.full(256, 255)
    for label_id, label in id2label.items():
        if label_id >= 0 and 0 <= label.trainId < 255:
            to_train_id[label_id] = label.trainId
    assert np.array_equal(to_train_id[label_ids], train_ids)  # labelIds -> trainIds via cityscapesscripts
    synthetic_to_train_id = np.full(256, 255)
    synthetic_to_train_id[: len(CITYSCAPES_TRAIN_IDS)] = CITYSCAPES_TRAIN_IDS
    assert np.array_equal(train_ids, synthetic_to_train_id[sample.mask])
    assert set(np.unique(label_ids)) <= {0, 7, 19, 21, 24, 26}
    assert (label_ids[sample.mask == 255] == 0).all()  # ignore -> "unlabeled"


def test_data_module_writes_its_own_images_in_cityscapes_layout(tmp_path):
    dm = SyntheticDataModule(num_train=2, num_val=1, image_size=32, seed=5)
    root = dm.write_cityscapes_layout(tmp_path, label_kinds=("labelTrainIds", "color"))
    color = Image.open(root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_color.png")
    assert color.mode == "RGBA" and color.size == (32, 32)
    image = np.asarray(Image.open(root / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"))
    assert np.array_equal(image, generate_sample(5, 0, "train", 32, 32).image)
    assert not list(root.rglob("*_labelIds.png"))


@pytest.mark.parametrize("cores", [2, 8])
def test_loading_in_the_training_process_is_explained_once_instead_of_lightnings_warning_per_loader(
    cores, monkeypatch, caplog
):
    import logging
    import warnings

    import lightning as L
    from lightning.pytorch.trainer.connectors.data_connector import _worker_check

    from dnlseg.data.synthetic import datamodule

    monkeypatch.setattr("lightning.fabric.utilities.data._num_cpus_available", lambda: cores)
    monkeypatch.setattr(logging.getLogger("dnlseg"), "propagate", True)  # as the command may have set it up
    caplog.set_level(logging.INFO, logger="dnlseg")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    seen = {}
    for num_workers in (0, 1):
        loader = LoaderOptions(batch_size=8, val_batch_size=None, num_workers=num_workers, pin_memory=False)
        data = SyntheticDataModule(num_train=4, num_val=2, image_size=32, loader=loader)
        data.trainer = trainer
        with warnings.catch_warnings(record=True) as caught:  # what a fit does with its two loaders
            warnings.simplefilter("always")
            _worker_check(trainer, data.train_dataloader(), "train_dataloader")
            _worker_check(trainer, data.val_dataloader(), "val_dataloader")
        seen[num_workers] = [str(w.message) for w in caught if "does not have many workers" in str(w.message)]
    records = {id(r): r for r in caplog.records}.values()  # one record reaches caplog twice when an in-process
    # command of an earlier test left the dnlseg logger with pytest's handlers (propagate is set True above)
    explained = [r.getMessage() for r in records if r.levelno == logging.INFO and r.name == datamodule.log.name]
    if cores == 2:  # Lightning suggests at most 1 worker: nothing to say
        assert seen == {0: [], 1: []} and explained == []
    else:
        assert seen[0] == [] and len(seen[1]) == 2  # a loader with 1 worker keeps Lightning's warning
        assert explained == [
            "synthetic images are generated in the training process (data.init_args.loader.num_workers=0); "
            "--data.init_args.loader.num_workers=7 generates them in parallel on this machine (the same images)"
        ]
