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
    IMAGENET_MEAN,
    IMAGENET_STD,
    CategoryBalancedCrop,
    RandomRescale,
    TrainAugmentation,
    eval_transform,
    init_worker,
    photometric_distortion,
    rescale_size,
    seed_transform,
    train_transform,
    unnormalize,
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
        "import dnlseg.cli.lightning_cli\n"
        "import albumentations\n"
        "assert albumentations.check_for_updates is stub.check_for_updates, 'the stub was not used'\n"
        "print(len(calls), os.environ.get('NO_ALBUMENTATIONS_UPDATE'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "1"]  # no update check; the variable is set for the workers too


def test_photometric_distortion_has_mmsegs_ranges_each_step_at_half_probability():
    # mmseg PhotoMetricDistortion(brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
    # hue_delta=18), each step with p = 0.5; albumentations takes brightness as a share of 255 and contrast as r - 1.
    brightness, contrast, saturation, hue = photometric_distortion()
    delta = 32 / 255
    assert isinstance(brightness, A.RandomBrightnessContrast) and isinstance(contrast, A.RandomBrightnessContrast)
    assert brightness.get_transform_init_args() == {
        "brightness_limit": (-delta, delta), "contrast_limit": (0.0, 0.0), "brightness_by_max": True,
        "ensure_safe_range": False, "p": 0.5,
    }  # fmt: skip
    assert contrast.get_transform_init_args()["brightness_limit"] == (0.0, 0.0)
    assert contrast.get_transform_init_args()["contrast_limit"] == (-0.5, 0.5) and contrast.p == 0.5
    assert isinstance(saturation, A.ColorJitter) and saturation.get_transform_init_args() == {
        "brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (0.5, 1.5), "hue": (0.0, 0.0), "p": 0.5,
    }  # fmt: skip
    assert isinstance(hue, A.HueSaturationValue) and hue.get_transform_init_args() == {
        "hue_shift_limit": (-18, 18), "sat_shift_limit": (0, 0), "val_shift_limit": (0, 0), "p": 0.5,
    }  # fmt: skip


def test_photometric_distortion_changes_colours_only_when_switched_on():
    image, mask = image_and_mask(24, 32)
    normalised = (image / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    for photometric in (False, True):
        aug = TrainAugmentation(crop_size=(24, 32), scale_range=(1.0, 1.0), flip_prob=0.0, photometric=photometric)
        transform = train_transform(aug)
        seed_transform(transform, 0)
        outs = [transform(image=image, mask=mask)["image"] for _ in range(8)]
        same = [np.allclose(out, normalised, atol=1e-4) for out in outs]
        # off: every output is the normalised image; on: 15 of 16 draws change it (1 - 0.5^4), so most of 8 do
        assert all(same) if not photometric else sum(same) <= 3


def test_eval_transform_only_normalises_with_the_imagenet_statistics():
    image, mask = image_and_mask(5, 7)
    out = eval_transform()(image=image, mask=mask)
    expected = (image / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out["image"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["mask"], mask)


def test_rescale_never_shrinks_a_side_below_one_pixel():
    assert rescale_size(10, 1000, None, 0.01) == (1, 10)  # 10 * 0.01 + 0.5 rounds to 0: kept at 1
    assert rescale_size(1000, 10, None, 0.01) == (10, 1)


def test_train_pipeline_rescales_relative_to_the_scale_base():
    # 40 x 50 image, base (long 20, short 10), factor 1: min(20 / 50, 10 / 40) = 0.25 -> 10 x 13 (12.5 rounds up),
    # padded to the 64 x 96 crop with the ignore label: the labelled region is the rescaled image.
    aug = TrainAugmentation(
        crop_size=(64, 96), scale_range=(1.0, 1.0), scale_base=(20, 10), flip_prob=0.0, photometric=False
    )
    image, mask = image_and_mask(40, 50)
    out = train_transform(aug, ignore_index=200)(image=image, mask=mask)["mask"]
    labelled = np.argwhere(out != 200)
    assert labelled.max(axis=0).tolist() == [9, 12] and len(labelled) == 10 * 13


def test_train_pipeline_crops_with_the_recipes_ratio_and_ignore_label():
    aug = TrainAugmentation(crop_size=(8, 8), cat_max_ratio=0.6)
    crops = [t for t in train_transform(aug, ignore_index=100).transforms if isinstance(t, CategoryBalancedCrop)]
    assert [(c.height, c.width, c.cat_max_ratio, c.ignore_index) for c in crops] == [(8, 8, 0.6, 100)]
    assert CategoryBalancedCrop(3, 4).get_transform_init_args() == {
        "height": 3, "width": 4, "cat_max_ratio": 0.75, "ignore_index": 255,
    }  # fmt: skip


def test_a_pipeline_not_yet_seeded_starts_from_the_same_fixed_stream():
    image, mask = image_and_mask()
    runs = [
        [train_transform(TrainAugmentation(crop_size=(32, 48)))(image=image, mask=mask)["image"] for _ in range(1)]
        for _ in range(2)
    ]
    assert np.array_equal(runs[0][0], runs[1][0])


def test_seed_transform_also_seeds_the_numpy_stream():
    # GaussNoise draws its noise from the numpy generator (the flip and crops use the Python one)
    image = np.full((8, 8, 3), 128, dtype=np.uint8)
    outs = []
    for _ in range(2):
        transform = A.Compose([A.GaussNoise(std_range=(0.1, 0.2), p=1.0)])
        seed_transform(transform, 3)
        outs.append(transform(image=image)["image"])
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], image)


def counted_boxes(crop, image, mask=None):
    """How many random boxes ``crop`` draws for one call (the first one plus its retries)."""
    calls = []
    draw = crop._random_box

    def counting(height, width):
        calls.append(1)
        return draw(height, width)

    crop._random_box = counting
    transform = A.Compose([crop])
    seed_transform(transform, 0)
    transform(image=image) if mask is None else transform(image=image, mask=mask)
    return len(calls)


def test_balanced_crop_retries_nine_times_then_keeps_the_tenth_box():
    one_class = np.zeros((20, 20), dtype=np.uint8)
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    # one class in every 2 x 2 crop: never balanced (were the ignore label counted as 1 pixel, 4 / 5 < 0.9 would pass)
    assert counted_boxes(CategoryBalancedCrop(2, 2, 0.9), image, one_class) == 10


def test_balanced_crop_accepts_a_share_below_the_ratio_counting_single_pixels_as_classes():
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    three_and_one = np.array([[0, 0], [0, 1]], dtype=np.uint8)  # class 0 covers 3 / 4 of the (only) crop
    assert counted_boxes(CategoryBalancedCrop(2, 2, 0.8), image, three_and_one) == 1  # 0.75 < 0.8: accepted
    assert counted_boxes(CategoryBalancedCrop(2, 2, 0.75), image, three_and_one) == 10  # 0.75 is not < 0.75


def test_balanced_crop_takes_the_first_box_without_a_ratio_below_one_or_without_a_label():
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    one_class = np.zeros((20, 20), dtype=np.uint8)
    assert counted_boxes(CategoryBalancedCrop(2, 2, 1.0), image, one_class) == 1
    assert counted_boxes(CategoryBalancedCrop(2, 2, None), image, one_class) == 1
    assert counted_boxes(CategoryBalancedCrop(2, 2, 0.5), image) == 1  # an image without a label
    assert CategoryBalancedCrop(2, 2).cat_max_ratio == 0.75  # mmseg's default


def fake_worker(monkeypatch, dataset, seed=1234):
    info = SimpleNamespace(seed=seed, id=0, num_workers=1, dataset=dataset)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)


def test_a_worker_without_a_rank_seeds_as_rank_zero_and_uses_one_opencv_thread(monkeypatch):
    import cv2

    threads = cv2.getNumThreads()
    fake_worker(monkeypatch, dataset=[1, 2, 3])  # a dataset without a transform: only the global streams
    try:
        init_worker(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(threads)
    assert random.random() == random.Random(worker_seed(1234, 0)).random()


def test_unnormalize_inverts_the_imagenet_normalisation_and_clips_to_the_unit_range():
    rgb = np.random.default_rng(0).random((2, 3, 3))  # (H, W, 3) in [0, 1]: H != W so a wrong permute shows
    rgb[0, 0] = (1.5, -0.5, 0.5)  # out of range: clipped to 1 and 0
    normalised = (rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    out = unnormalize(torch.from_numpy(normalised.transpose(2, 0, 1).copy()))
    assert out.shape == (2, 3, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.clip(rgb, 0, 1), atol=1e-6)
    other = unnormalize(torch.zeros(3, 1, 1), mean=(0.1, 0.2, 0.3), std=(1.0, 1.0, 1.0))
    np.testing.assert_allclose(other[0, 0], [0.1, 0.2, 0.3], atol=1e-7)
