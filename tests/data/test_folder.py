"""data/folder.py: reading label PNGs, the setup checks of (image, label) pairs and their error messages."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dnlseg.data.folder import (
    CorruptFileError,
    DatasetLayoutError,
    FilePair,
    check_pair,
    check_pairs,
    lookup_table,
    pair_by_stem,
    read_image,
    read_label,
)


def write_label(path, values, mode=None):
    Image.fromarray(np.asarray(values), mode=mode).save(path)
    return path


def test_lookup_table_maps_values_to_train_ids_ignore_to_255_and_the_rest_to_invalid():
    table = lookup_table({7: 0, 8: 1}, ignore_values=(0, 1))
    assert table.dtype == np.int16 and table.shape == (256,)
    assert (table[7], table[8], table[0], table[1], table[2], table[255]) == (0, 1, 255, 255, -1, -1)


def test_a_16_bit_label_png_is_read_as_its_8_bit_values(tmp_path):
    path = write_label(tmp_path / "l16.png", np.array([[0, 7], [8, 255]], dtype=np.uint16))
    assert Image.open(path).mode.startswith("I")
    label = read_label(path, lookup_table({7: 0, 8: 1}, ignore_values=(0, 255)))
    assert label.dtype == np.uint8 and label.tolist() == [[255, 0], [1, 255]]
    assert read_label(path, None).tolist() == [[0, 7], [8, 255]]


def test_a_16_bit_label_with_values_above_255_is_refused_naming_the_file(tmp_path):
    path = write_label(tmp_path / "big.png", np.array([[0, 256]], dtype=np.uint16))
    with pytest.raises(DatasetLayoutError, match=r"label .*big.png holds values outside 0..255 \(dtype uint16\)"):
        read_label(path, None)


def test_label_values_outside_the_datasets_are_listed_with_the_valid_range(tmp_path):
    path = write_label(tmp_path / "l.png", np.array([[7, 9, 9, 12]], dtype=np.uint8))
    with pytest.raises(
        DatasetLayoutError, match=r"l.png holds values \[9, 12\] outside the dataset's label values \(0..8"
    ):
        read_label(path, lookup_table({7: 0, 8: 1}, ignore_values=(0,)))


def test_a_colour_label_is_refused(tmp_path):
    path = write_label(tmp_path / "rgb.png", np.zeros((2, 2, 3), dtype=np.uint8))
    with pytest.raises(CorruptFileError, match="rgb.png has image mode 'RGB'"):
        read_label(path, None)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(CorruptFileError, match="cannot decode label .*broken.png"):
        read_label(tmp_path / "broken.png", None)
    with pytest.raises(CorruptFileError, match="cannot decode image .*broken.png"):
        read_image(tmp_path / "broken.png")


def pairs_with_bad_values(tmp_path, count):
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    table = lookup_table({0: 0})
    pairs = []
    for i in range(count):
        label = write_label(tmp_path / f"label{i:02d}.png", np.full((4, 6), 9, dtype=np.uint8))  # 9: invalid
        pairs.append(FilePair(f"s{i}", tmp_path / "image.png", label, table))
    return pairs


def test_check_values_false_reads_only_the_headers(tmp_path):
    pairs = pairs_with_bad_values(tmp_path, 2)
    check_pairs(pairs, "split", check_values=False)  # the invalid values are not looked at
    with pytest.raises(DatasetLayoutError, match="2 bad samples in split"):
        check_pairs(pairs, "split", check_values=True)


def test_a_size_mismatch_is_found_from_the_headers(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    label = write_label(tmp_path / "label.png", np.zeros((4, 5), dtype=np.uint8))
    pair = FilePair("s", tmp_path / "image.png", label, lookup_table({0: 0}))
    for check_values in (False, True):
        problem = check_pair(pair, check_values)
        assert problem.startswith("size mismatch: image ") and "is 6x4 (WxH), label " in problem
        assert problem.endswith("label.png is 5x4")
    assert check_pair(FilePair("u", tmp_path / "image.png"), True) is None  # unlabelled: the image alone


def test_more_than_ten_problems_are_listed_ten_and_counted(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        check_pairs(pairs_with_bad_values(tmp_path, 13), "Cityscapes val (/data)", num_threads=2)
    lines = str(error.value).splitlines()
    assert lines[0] == "13 bad samples in Cityscapes val (/data):"
    assert len(lines) == 12 and lines[-1] == "  ... and 3 more"
    assert all("holds values [9]" in line for line in lines[1:11])


def test_exactly_ten_problems_have_no_more_line(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        check_pairs(pairs_with_bad_values(tmp_path, 10), "split")
    assert len(str(error.value).splitlines()) == 11 and "more" not in str(error.value)


def test_unmatched_images_and_labels_are_named_on_both_sides(tmp_path):
    images = {"a": tmp_path / "a.jpg", "b": tmp_path / "b.jpg"}
    labels = {"b": tmp_path / "b.png", "c": tmp_path / "c.png"}
    with pytest.raises(DatasetLayoutError) as error:
        pair_by_stem(images, labels, "ADE20K training", "layout here")
    message = str(error.value)
    assert message.startswith("ADE20K training: 1 images without labels and 1 labels without images:")
    assert f"image without label: {tmp_path / 'a.jpg'}" in message
    assert f"label without image: {tmp_path / 'c.png'}" in message and message.endswith("layout here")
    assert pair_by_stem({"b": images["b"]}, {"b": labels["b"]}, "x", "") == [("b", images["b"], labels["b"])]


@pytest.mark.parametrize("rank", [0, 1])
def test_the_train_loader_seeds_the_augmentation_with_the_rank(cityscapes_root, rank):
    from dnlseg.data import CityscapesDataModule, TrainAugmentation
    from dnlseg.data.transforms import init_worker, seed_transform, worker_seed
    from tests.helpers import fake_trainer

    augmentation = TrainAugmentation(crop_size=(32, 32))
    dm = CityscapesDataModule(str(cityscapes_root), augmentation=augmentation, num_workers=0, seed=7)
    dm.trainer = SimpleNamespace(**vars(fake_trainer(global_rank=rank)), world_size=2)
    loader = dm.train_dataloader()
    assert loader.worker_init_fn.func is init_worker and loader.worker_init_fn.keywords == {"rank": rank}
    first = loader.dataset[0]["image"]  # the main-process stream (num_workers=0): seeded from (seed, rank)
    seed_transform(loader.dataset.transform, worker_seed(7, rank))
    assert torch.equal(loader.dataset[0]["image"], first)
    seed_transform(loader.dataset.transform, worker_seed(7, 1 - rank))
    assert not torch.equal(loader.dataset[0]["image"], first)
    assert len(loader.sampler) == 2  # 4 train images over 2 ranks
