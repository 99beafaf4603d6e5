"""The training augmentation: sizes, padding, the balanced crop, and seeding per run, per worker and per transform."""

import os
import random
import subprocess
import sys
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dnlseg.data.folder import FilePair, SegmentationFiles
from dnlseg.data.transforms import (
    CategoryBalancedCrop,
    RandomRescale,
    TrainAugmentation,
    init_worker,
    rescale_size,
    seed_transform,
    train_transform,
    worker_seed,
)


def image_and_mask(height=48, width=80, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), rng.integers(0, 5, (height, width), dtype=np.uint8)


def test_rescale_fits_the_base_box_keeping_the_aspect_ratio():
    assert rescale_size(1024, 2048, (2048, 1024), 0.5) == (512, 1024)  # Cityscapes: base = its own size
    assert rescale_size(1024, 2048, None, 2.0) == (2048, 4096)
    assert rescale_size(384, 512, (2048, 512), 1.0) == (512, 683)  # ADE20K: the short side goes to 512
    assert rescale_size(200, 2000, (2048, 512), 1.0) == (205, 2048)  # ... unless the long side hits 2048


def test_small_images_are_padded_to_the_crop_with_mean_colour_and_ignore_label():
    aug = TrainAugmentation(crop_size=(64, 96), scale_range=(1.0, 1.0), flip_prob=0.0, photometric=False)
    transform = train_transform(aug)
    image, mask = image_and_mask(40, 50)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (64, 96, 3) and out["mask"].shape == (64, 96)
    assert out["image"].dtype == np.float32 and out["mask"].dtype == np.uint8
    np.testing.assert_array_equal(out["mask"][:40, :50], mask)  # top-left: the image, unchanged
    assert (out["mask"][40:] == 255).all() and (out["mask"][:, 50:] == 255).all()
    assert (out["image"][40:] == 0).all() and (out["image"][:, 50:] == 0).all()  # 0 after normalisation
    expected = (image[0, 0] / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out["image"][0, 0], expected, rtol=1e-4)


def test_training_crops_have_the_crop_size_over_the_whole_scale_range():
    transform = train_transform(TrainAugmentation(crop_size=(32, 48)))
    seed_transform(transform, 0)
    image, mask = image_and_mask()
    for _ in range(20):
        out = transform(image=image, mask=mask)
        assert out["image"].shape == (32, 48, 3) and out["mask"].shape == (32, 48)
        assert set(np.unique(out["mask"])) <= {0, 1, 2, 3, 4, 255}


def test_category_balanced_crop_avoids_crops_dominated_by_one_class():
    # Class 0 on the left three quarters, class 1 on the right quarter: a 100x100 crop of this 100x400 label is
    # balanced (max share < 0.75) only for x0 in (225, 275), 1 in 6 random crops.
    mask = np.zeros((100, 400), dtype=np.uint8)
    mask[:, 300:] = 1
    image = np.zeros((100, 400, 3), dtype=np.uint8)

    def balanced_share(cat_max_ratio):
        transform = A.Compose([CategoryBalancedCrop(100, 100, cat_max_ratio)])
        seed_transform(transform, 0)
        hits = 0
        for _ in range(100):
            crop = transform(image=image, mask=mask)["mask"]
            hits += np.bincount(crop.ravel(), minlength=2).max() / crop.size < 0.75
        return hits / 100

    assert balanced_share(None) < 0.3
    assert balanced_share(0.75) > 0.7  # 1 - (5/6)^10 = 0.84 with 10 tries


def test_same_seed_same_augmentations_other_seed_other_ones():
    image, mask = image_and_mask()
    runs = []
    for seed in (0, 0, 1):
        transform = train_transform(TrainAugmentation(crop_size=(32, 48)))
        seed_transform(transform, seed)
        runs.append([transform(image=image, mask=mask)["image"] for _ in range(3)])
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_transforms_of_a_pipeline_draw_from_one_stream_not_copies_of_one_seed():
    # Compose(seed=s) seeds every child with s: two p=0.5 transforms make their first decision with the same
    # number. seed_transform shares one generator, so the flip and the brightness change are independent.
    gradient = np.tile(np.arange(64, dtype=np.uint8)[None, :, None], (8, 1, 3)) + 64

    def pipeline(seed=None):
        return A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.RandomBrightnessContrast(brightness_limit=(0.2, 0.3), contrast_limit=(0.0, 0.0), p=0.5),
            ],
            seed=seed,
        )

    def first_decision(transform):
        y = transform(image=gradient)["image"]
        return bool(y[0, 0, 0] > y[0, -1, 0]), abs(float(y.mean()) - float(gradient.mean())) > 1  # flipped, brighter

    per_child_seed = [first_decision(pipeline(seed)) for seed in range(30)]
    assert all(flip == bright for flip, bright in per_child_seed)  # albumentations' own seeding: correlated
    shared = []
    for seed in range(30):
        transform = pipeline()
        seed_transform(transform, seed)
        shared.append(first_decision(transform))
    assert sum(flip != bright for flip, bright in shared) >= 5  # ~15 of 30 expected when independent
    assert 5 <= sum(flip for flip, _ in shared) <= 25


def one_image_dataset(tmp_path, copies=4):
    image, mask = image_and_mask(40, 60)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "x.png")
    Image.fromarray(mask).save(tmp_path / "y.png")
    table = np.arange(256, dtype=np.int16)
    pairs = [FilePair(f"x{i}", tmp_path / "x.png", tmp_path / "y.png", table) for i in range(copies)]
    return SegmentationFiles(pairs, train_transform(TrainAugmentation(crop_size=(24, 32))))


def first_items(dataset, worker_init_fn, seed=0):
    loader = DataLoader(
        dataset,
        batch_size=1,
        num_workers=2,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(seed),
        multiprocessing_context="fork",
    )
    return [batch["image"][0] for batch in loader]


def test_each_worker_gets_its_own_augmentation_stream_and_a_rerun_repeats_it(tmp_path):
    dataset = one_image_dataset(tmp_path)
    # Items 0 and 1 are the first draws of workers 0 and 1, from the same file.
    without = first_items(dataset, worker_init_fn=None)
    assert torch.equal(without[0], without[1])  # albumentations alone: forked workers repeat each other
    seeded = first_items(dataset, worker_init_fn=init_worker)
    assert not torch.equal(seeded[0], seeded[1])
    again = first_items(dataset, worker_init_fn=init_worker)
    assert all(torch.equal(a, b) for a, b in zip(seeded, again, strict=True))
    other_seed = first_items(dataset, worker_init_fn=init_worker, seed=1)
    assert not torch.equal(seeded[0], other_seed[0])


def test_worker_seed_differs_per_rank_and_per_worker_seed_and_fits_32_bits():
    seeds = {(base, rank): worker_seed(base, rank) for base in (0, 1, 2**40 + 7) for rank in range(4)}
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= s < 2**32 for s in seeds.values())
    assert worker_seed(5, 3) == worker_seed(5, 3) and worker_seed(5) == worker_seed(5, 0)
    assert worker_seed(2**63 + 5, 1) == worker_seed(5, 1)  # base seeds wrap at 2**63 (torch's are < 2**64)


def draws_in_a_worker(monkeypatch, tmp_path, rank, worker_base_seed=1234):
    """What a DataLoader worker with PyTorch seed ``worker_base_seed`` on DDP rank ``rank`` draws, in-process."""
    dataset = one_image_dataset(tmp_path, copies=1)
    info = SimpleNamespace(seed=worker_base_seed, id=0, num_workers=1, dataset=dataset)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
    init_worker(0, rank=rank)
    return dataset[0]["image"], np.random.random(), random.random()


def test_ddp_ranks_draw_different_augmentations_and_each_rank_repeats_its_own(monkeypatch, tmp_path):
    rank0, rank1, rank0_again = (draws_in_a_worker(monkeypatch, tmp_path, rank) for rank in (0, 1, 0))
    assert not torch.equal(rank0[0], rank1[0]) and rank0[1:] != rank1[1:]
    assert torch.equal(rank0[0], rank0_again[0]) and rank0[1:] == rank0_again[1:]
    expected = worker_seed(1234, 1)  # the worker's numpy and random streams start from the mixed seed
    assert rank1[1] == np.random.RandomState(expected).random_sample() and rank1[2] == random.Random(expected).random()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("crop_size", (0, 10), r"crop_size=\(0, 10\) must be \(height, width\), both >= 1"),
        ("crop_size", (10,), "crop_size"),
        ("scale_range", (2.0, 1.0), r"scale_range=\(2.0, 1.0\) must be \(min, max\) with 0 < min <= max"),
        ("scale_range", (0.0, 1.0), "scale_range"),
        ("scale_base", (2048,), r"scale_base=\(2048,\) must be \(long side, short side\) >= 1, or null"),
        ("scale_base", (2048, 0), "scale_base"),
        ("cat_max_ratio", 0.0, r"cat_max_ratio=0.0 must be in \(0, 1\] or null"),
        ("cat_max_ratio", 1.5, "cat_max_ratio"),
        ("flip_prob", 1.5, r"flip_prob=1.5 must be in \[0, 1\]"),
        ("flip_prob", -0.1, "flip_prob"),
    ],
)
def test_invalid_augmentation_settings_raise_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainAugmentation(**{field: value})


def test_boundary_augmentation_settings_are_accepted():
    TrainAugmentation(crop_size=(1, 1), scale_range=(1.0, 1.0), scale_base=(1, 1), cat_max_ratio=1.0, flip_prob=0.0)
    TrainAugmentation(flip_prob=1.0, cat_max_ratio=None, scale_base=None)


def test_balanced_crop_ignores_the_ignore_label_and_needs_two_classes():
    # 100 x 400 label: class 0 on x < 190, class 1 on 190 <= x < 200, ignored (255) on x >= 200. Counting the
    # labelled pixels only, a crop is balanced (class 0 < 95 %) when it holds enough of the class-1 strip; with 255
    # counted as a class, or one class accepted, crops of the ignored half or of class 0 alone would pass.
    mask = np.zeros((100, 400), dtype=np.uint8)
    mask[:, 200:] = 255
    mask[:, 190:200] = 1  # a thin strip of class 1 next to the ignored half
    image = np.zeros((100, 400, 3), dtype=np.uint8)
    transform = A.Compose([CategoryBalancedCrop(100, 100, cat_max_ratio=0.95)])
    seed_transform(transform, 0)
    for _ in range(30):
        crop = transform(image=image, mask=mask)["mask"]
        counts = np.bincount(crop.ravel(), minlength=256)
        labelled = counts[0] + counts[1]
        # accepted crops hold both classes with class 0 below 95 % of the LABELLED pixels (255 not counted)
        assert counts[1] > 0 and counts[0] / labelled < 0.95


def test_rescale_uses_bilinear_images_and_nearest_labels():
    transform = A.Compose([RandomRescale((2.0, 2.0))])
    image = np.array([[[0, 0, 0], [100, 100, 100]]], dtype=np.uint8)  # (1, 2, 3)
    mask = np.array([[1, 3]], dtype=np.uint8)
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (2, 4, 3) and out["mask"].tolist() == [[1, 1, 3, 3]] * 2
    assert out["image"][0, :, 0].tolist() == [0, 25, 75, 100]  # half-pixel bilinear
    assert RandomRescale((0.5, 1.0), (10, 5)).get_transform_init_args_names() == ("scale_range", "scale_base")


def test_seed_worker_is_a_no_op_in_the_main_process():
    state = random.getstate()
    init_worker(0)
    assert random.getstate() == state


def test_albumentations_update_check_does_not_run_when_the_dnlseg_command_is_imported():
    # A fresh interpreter (about 5 s: torch and Lightning) with albumentations' check_for_updates replaced by a stub
    # that records its calls. albumentations calls it at the end of its own import unless NO_ALBUMENTATIONS_UPDATE
    # is set by then: a dnlseg module that imports albumentations before setting the variable makes a call.
    code = (
        "import os, sys, types\n"
        "calls = []\n"
        "stub = types.ModuleType('albumentations.check_version')\n"
        "stub.check_for_updates = lambda *args, **kwargs: calls.append(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))\n"
        "sys.modules['albumentations.check_version'] = stub\n"
        "import dnlseg.cli\n"
        "import albumentations\n"
        "assert albumentations.check_for_updates is stub.check_for_updates, 'the stub was not used'\n"
        "print(len(calls), os.environ.get('NO_ALBUMENTATIONS_UPDATE'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "1"]  # no update check; the variable is set for the workers too
