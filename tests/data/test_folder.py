"""data/folder.py: reading label PNGs, the setup checks of (image, label) pairs and their error messages."""

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from dnlseg.data import LoaderOptions, ResumableDataLoader, SetupChecks, TrainAugmentation
from dnlseg.data.folder import (
    FilePair,
    FolderDataModule,
    SegmentationFiles,
    check_pair,
    check_pairs,
    lookup_table,
    pair_by_stem,
    read_image,
    read_label,
)
from dnlseg.data.transforms import RandomRescale, eval_transform
from dnlseg.errors import CorruptFileError, DatasetLayoutError


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
        DatasetLayoutError, match=r"l.png holds values \[9, 12\] outside the dataset's label values \(0, 7, 8, see"
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
    assert all(
        line.startswith("  label ") and line.endswith("(0, see the DataModule docstring)") for line in lines[1:11]
    )


def test_exactly_ten_problems_have_no_more_line(tmp_path):
    with pytest.raises(DatasetLayoutError) as error:
        check_pairs(pairs_with_bad_values(tmp_path, 10), "split")
    assert len(str(error.value).splitlines()) == 11 and str(error.value).endswith("see the DataModule docstring)")


def test_unmatched_images_and_labels_are_named_on_both_sides(tmp_path):
    images = {"a": tmp_path / "a.jpg", "b": tmp_path / "b.jpg"}
    labels = {"b": tmp_path / "b.png", "c": tmp_path / "c.png"}
    with pytest.raises(DatasetLayoutError) as error:
        pair_by_stem(images, labels, "ADE20K training", "layout here")
    message = str(error.value)
    assert message.splitlines() == [
        "ADE20K training: 1 images without labels and 1 labels without images:",
        f"  image without label: {tmp_path / 'a.jpg'}",
        f"  label without image: {tmp_path / 'c.png'}",
        "expected layout:",
        "layout here",
    ]
    assert pair_by_stem({"b": images["b"]}, {"b": labels["b"]}, "x", "") == [("b", images["b"], labels["b"])]


def test_listed_samples_keep_the_list_order_once_each_and_missing_files_are_counted_in_one_line(tmp_path):
    from dnlseg.data.folder import listed_pairs

    for name in ("b", "a"):
        save_image(tmp_path / f"{name}.jpg")
        write_label(tmp_path / f"{name}.png", np.zeros((2, 2), dtype=np.uint8))
    table = lookup_table({0: 0})
    image, label = (lambda n: tmp_path / f"{n}.jpg"), (lambda n: tmp_path / f"{n}.png")
    pairs = listed_pairs(["b", "a", "b"], image, label, table, "list x")
    assert [(p.name, p.image, p.label, p.label_map is table) for p in pairs] == [
        ("b", image("b"), label("b"), True),
        ("a", image("a"), label("a"), True),
    ]
    assert [(p.label, p.label_map) for p in listed_pairs(["a"], image, None, table, "x")] == [(None, None)]
    with pytest.raises(DatasetLayoutError) as error:
        listed_pairs(["a", "c", "d", "e"], image, label, table, "list x")
    missing = ", ".join(str(tmp_path / f) for f in ("c.jpg", "c.png", "d.jpg"))
    assert str(error.value) == f"list x: 6 listed files do not exist: {missing} and 3 more"
    for count, more in ((3, ""), (4, " and 1 more")):  # three are named, the rest counted
        with pytest.raises(DatasetLayoutError) as error:
            listed_pairs([f"m{i}" for i in range(count)], image, None, table, "list y")
        assert str(error.value).endswith(f"{tmp_path / 'm2.jpg'}{more}")


def test_unpaired_folder_files_are_named_with_the_split_and_the_expected_layout(tmp_path):
    from dnlseg.data.folder import folder_pairs

    for name in ("a", "b"):
        save_image(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels").mkdir()
    write_label(tmp_path / "labels" / "a.png", np.zeros((2, 2), dtype=np.uint8))
    listing = {"list_images": lambda d: {p.stem: p for p in sorted(d.glob("*.png"))}, "image_pattern": "*.png"}
    with pytest.raises(DatasetLayoutError) as error:
        folder_pairs(
            tmp_path / "images",
            tmp_path / "labels",
            True,
            **listing,
            list_labels=listing["list_images"],
            label_map=lookup_table({0: 0}),
            what="Own val (/r)",
            layout="  the layout",
        )
    message = str(error.value)
    assert message.startswith("Own val (/r): 1 images without labels") and message.endswith("layout:\n  the layout")


def test_roots_are_named_with_the_dataset_or_the_class_and_the_environment_variable_only_where_there_is_one(
    tmp_path, monkeypatch
):
    from dnlseg.data import CityscapesDataModule, ImageMaskDataModule

    monkeypatch.delenv("CITYSCAPES_ROOT", raising=False)
    assert CityscapesDataModule().describe("val") == "Cityscapes val ($CITYSCAPES_ROOT)"
    own = ImageMaskDataModule(classes=[{"name": "a", "color": [0, 0, 0]}])
    with pytest.raises(DatasetLayoutError) as error:
        own.setup("fit")
    assert (
        str(error.value) == "no dataset root: set the DataModule's `root` (e.g. --data.init_args.root=/path/to/dataset)"
    )
    with pytest.raises(
        DatasetLayoutError, match=rf"^NoFiles root {tmp_path / 'none'} does not exist or is not a folder"
    ):
        no_files(root=str(tmp_path / "none")).dataset_root()


@pytest.mark.parametrize("name", ["CityscapesDataModule", "ADE20KDataModule", "VOCDataModule", "ImageMaskDataModule"])
def test_every_file_datamodule_records_its_own_and_the_shared_arguments_as_hyperparameters(name):
    import dnlseg.data

    loader = LoaderOptions(batch_size=3, num_workers=0)
    classes = [{"name": "a", "color": [1, 2, 3]}] if name == "ImageMaskDataModule" else None
    extra = {"classes": classes} if classes else {}
    dm = getattr(dnlseg.data, name)("somewhere", loader=loader, predict_split="other", predict_dir="x", **extra)
    # as plain values, so that a checkpoint holding them loads with weights_only (checkpoints/hyperparameters.py)
    assert dm.hparams["loader"] == dataclasses.asdict(loader)
    assert dm.hparams["checks"] == dataclasses.asdict(SetupChecks())
    assert (dm.hparams["root"], dm.hparams["predict_split"], dm.hparams["predict_dir"]) == ("somewhere", "other", "x")


@pytest.mark.parametrize("rank", [0, 1])
def test_the_train_loader_seeds_the_augmentation_with_the_rank(cityscapes_root, rank):
    from dnlseg.data import CityscapesDataModule
    from dnlseg.data.transforms import init_worker, seed_transform, worker_seed
    from tests.helpers import fake_trainer

    augmentation = TrainAugmentation(crop_size=(32, 32))
    dm = CityscapesDataModule(
        str(cityscapes_root), augmentation=augmentation, loader=LoaderOptions(num_workers=0), seed=7
    )
    dm.trainer = SimpleNamespace(**vars(fake_trainer(global_rank=rank)), world_size=2)
    loader = dm.train_dataloader()
    assert loader.worker_init_fn.func is init_worker and loader.worker_init_fn.keywords == {"rank": rank}
    first = loader.dataset[0]["image"]  # the main-process stream (num_workers=0): seeded from (seed, rank)
    seed_transform(loader.dataset.transform, worker_seed(7, rank))
    assert torch.equal(loader.dataset[0]["image"], first)
    seed_transform(loader.dataset.transform, worker_seed(7, 1 - rank))
    assert not torch.equal(loader.dataset[0]["image"], first)
    assert len(loader.sampler) == 2 and loader.sampler.rank == rank  # 4 train images over 2 ranks


class TwoSplits(FolderDataModule):
    """A FolderDataModule over files in ``root``: 3 labelled "train" images, 2 "val", 1 unlabelled "predict"."""

    def __init__(self, folder, seed=5, num_workers=0, pin_memory=False):
        super().__init__(
            augmentation=TrainAugmentation(crop_size=(4, 4)),
            loader=LoaderOptions(batch_size=2, val_batch_size=1, num_workers=num_workers, pin_memory=pin_memory),
            checks=SetupChecks(label_values=True, threads=1),
            seed=seed,
        )
        self.folder = folder
        self.splits = {"train": "tr", "val": "va", "test": "va", "predict": "pr"}
        self.found = []

    def find_pairs(self, split, labelled):
        self.found.append(split)
        count = {"tr": 3, "va": 2, "pr": 1}[split]
        Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(self.folder / "image.png")
        label = write_label(self.folder / "label.png", np.zeros((4, 6), dtype=np.uint8)) if labelled else None
        return [FilePair(f"{split}{i}", self.folder / "image.png", label, lookup_table({0: 0})) for i in range(count)]


def test_setup_finds_the_splits_each_stage_uses_once(tmp_path):
    dm = TwoSplits(tmp_path)
    dm.setup("validate")
    assert dm.found == ["va"] and list(dm.datasets) == ["val"]
    dm.setup("fit")
    assert dm.found == ["va", "tr"] and list(dm.datasets) == ["val", "train"]  # val is not found again
    dm.setup("test")
    dm.setup("predict")
    assert dm.found == ["va", "tr", "va", "pr"] and "mask" not in dm.datasets["predict"][0]
    other = TwoSplits(tmp_path)
    other.setup(None)  # no stage: fit's splits
    assert other.found == ["tr", "va"]
    assert isinstance(other.datasets["train"].transform.transforms[0], RandomRescale)  # train: the augmentation
    assert other.datasets["val"][0]["image"].shape == (3, 4, 6)  # evaluation: normalisation only, full size


def test_train_loader_is_resumable_shuffled_by_seed_and_drops_the_last_batch(tmp_path):
    dm = TwoSplits(tmp_path)
    loader = dm.train_dataloader()
    assert dm.found == ["tr", "va"]  # a loader asked for first sets its stage up
    assert isinstance(loader, ResumableDataLoader) and loader.drop_last and loader.batch_size == 2
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 5 and loader.sampler.shuffle
    assert loader.generator.initial_seed() == 5 and len(loader) == 1  # 3 images, batches of 2
    assert loader.num_workers == 0 and not loader.persistent_workers and not loader.pin_memory


@pytest.mark.parametrize("role", ["val", "test", "predict"])
def test_evaluation_loaders_keep_every_image_in_order(tmp_path, role):
    dm = TwoSplits(tmp_path)
    loader = getattr(dm, f"{role}_dataloader")()
    assert dm.found == [dm.splits[role]]  # only the split this loader needs
    assert type(loader) is torch.utils.data.DataLoader and not loader.drop_last and loader.batch_size == 1
    assert loader.generator is None and isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    assert [batch["name"][0] for batch in loader] == [f"{dm.splits[role]}{i}" for i in range(len(loader))]


def test_workers_persist_and_memory_is_pinned_only_with_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dm = TwoSplits(tmp_path, num_workers=1, pin_memory=True)
    loader = dm.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1 and not loader.pin_memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TwoSplits(tmp_path, num_workers=1, pin_memory=True).val_dataloader().pin_memory


def test_without_a_seed_the_loader_follows_the_global_seed(tmp_path):
    torch.manual_seed(2**63 + 9)  # torch seeds are up to 2**64 - 1; the loader's seed wraps at 2**63
    loader = TwoSplits(tmp_path, seed=None).train_dataloader()
    assert loader.sampler.seed == 9 and loader.generator.initial_seed() == 9


def test_names_and_the_default_prediction_encoding(tmp_path):
    dm = TwoSplits(tmp_path)
    assert dm.describe("va") == "TwoSplits va"
    encoded = dm.encode_prediction(np.array([[3, 200]], dtype=np.int64))
    assert encoded.dtype == np.uint8 and encoded.tolist() == [[3, 200]]


def test_check_pairs_logs_how_many_samples_it_checked(tmp_path, caplog):
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    pairs = [FilePair(f"s{i}", tmp_path / "image.png") for i in range(3)]
    with caplog.at_level("INFO", logger="dnlseg.data.folder"):
        check_pairs(pairs, "Cityscapes val (/data)", num_threads=0)  # 0 threads: at least one
    assert re.fullmatch(r"checked 3 samples of Cityscapes val \(/data\) in \d+\.\d s", caplog.records[-1].getMessage())


def test_unreadable_images_are_named(tmp_path):
    with pytest.raises(CorruptFileError, match="cannot decode image .*missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty.png"):
        read_image(tmp_path / "empty.png")
    Image.fromarray(np.full((2, 3), 7, dtype=np.uint8)).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").tolist() == [[[7, 7, 7]] * 3] * 2  # grey -> RGB


def test_a_size_mismatch_found_when_loading_names_both_sizes(tmp_path):
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    label = write_label(tmp_path / "label.png", np.zeros((3, 5), dtype=np.uint8))
    dataset = SegmentationFiles([FilePair("s", tmp_path / "image.png", label, lookup_table({0: 0}))], eval_transform())
    with pytest.raises(DatasetLayoutError, match=r"image .*image.png is 6x4 \(WxH\), label .*label.png is 5x3$"):
        dataset[0]


def test_palette_labels_are_single_channel_too(tmp_path):
    palette = Image.fromarray(np.array([[0, 1], [1, 2]], dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert read_label(tmp_path / "p.png", None).tolist() == [[0, 1], [1, 2]]


def test_at_most_twenty_invalid_values_are_listed(tmp_path):
    path = write_label(tmp_path / "many.png", np.arange(30, 60, dtype=np.uint8)[None])
    with pytest.raises(DatasetLayoutError, match=r"holds values \[30, 31, .*, 49\] outside"):
        read_label(path, lookup_table({0: 0}))


class NoFiles(FolderDataModule):
    def find_pairs(self, split, labelled):
        return []


def no_files(**kwargs):
    loader = LoaderOptions(batch_size=1, num_workers=0)
    return NoFiles(augmentation=TrainAugmentation(), loader=loader, checks=SetupChecks(), **kwargs)


def test_a_32_bit_label_is_read_and_negative_values_are_refused(tmp_path):
    # PIL's 32-bit mode "I" (PNG cannot hold it; a TIFF can, and labels are opened by content, not suffix)
    path = write_label(tmp_path / "l32.tif", np.array([[0, 7], [255, 3]], dtype=np.int32))
    assert Image.open(path).mode == "I"
    assert read_label(path, None).tolist() == [[0, 7], [255, 3]]
    negative = write_label(tmp_path / "neg.tif", np.array([[0, -1]], dtype=np.int32))
    with pytest.raises(DatasetLayoutError, match=r"neg.tif holds values outside 0..255 \(dtype int32\)"):
        read_label(negative, None)


def test_colour_images_are_read_as_rgb_whatever_their_channels(tmp_path):
    pixels = np.array([[[255, 0, 0], [0, 128, 255]]], dtype=np.uint8)  # red, and a blue-ish colour: order shows
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    Image.fromarray(np.concatenate([pixels, np.full((1, 2, 1), 9, dtype=np.uint8)], axis=-1)).save(tmp_path / "a.png")
    for name in ("rgb.png", "a.png"):
        image = read_image(tmp_path / name)
        assert image.dtype == np.uint8 and image.tolist() == pixels.tolist()


def test_label_values_are_described_as_ranges_pairs_and_singles():
    from dnlseg.data.folder import describe_values

    assert describe_values([9, 0, 1, 2, 5, 6, 255]) == "0..2, 5, 6, 9, 255"  # a run of 2 is a pair, not 5..6


def test_check_pairs_logs_a_duration_in_seconds(tmp_path, caplog):
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    with caplog.at_level("INFO", logger="dnlseg.data.folder"):
        check_pairs([FilePair("s", tmp_path / "image.png")], "split")
    assert float(caplog.records[-1].getMessage().split(" in ")[-1].removesuffix(" s")) < 60


def save_image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((2, 3, 3), dtype=np.uint8)).save(path)


def test_a_predict_folder_lists_image_files_only_skipping_hidden_ones(tmp_path):
    from dnlseg.data.folder import image_folder_pairs

    for name in ("b.png", "city/a.JPG", ".hidden.png", ".cache/c.png"):
        save_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.png").mkdir()  # an image suffix on a folder
    pairs = image_folder_pairs(tmp_path)
    assert [(p.name, p.image, p.label) for p in pairs] == [
        ("b", tmp_path / "b.png", None),
        ("city/a", tmp_path / "city" / "a.JPG", None),
    ]


def test_a_predict_folder_that_is_missing_empty_or_has_name_clashes_is_refused(tmp_path):
    from dnlseg.data.folder import image_folder_pairs

    with pytest.raises(DatasetLayoutError) as error:
        image_folder_pairs(tmp_path / "none")
    assert str(error.value) == f"predict_dir {tmp_path / 'none'} does not exist or is not a folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError) as error:
        image_folder_pairs(tmp_path / "empty")
    assert str(error.value) == f"predict_dir {tmp_path / 'empty'} holds no images (.png/.jpg/.jpeg, subfolders read)"
    for stem in "abcdef":
        save_image(tmp_path / "clash" / f"{stem}.png")
        save_image(tmp_path / "clash" / f"{stem}.jpg")
    with pytest.raises(DatasetLayoutError) as error:
        image_folder_pairs(tmp_path / "clash")
    assert str(error.value) == (
        f"predict_dir {tmp_path / 'clash'}: images of the same name with other suffixes: "
        "['a', 'b', 'c', 'd', 'e']"  # the first five of six
    )


def test_the_predict_folder_loader_keeps_order_and_names_the_folder_of_a_bad_file(tmp_path, monkeypatch):
    from dnlseg.data.folder import predict_folder_loader

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pin_memory would be honoured
    for name in ("c.png", "a.png", "b.png"):
        save_image(tmp_path / name)
    loader = predict_folder_loader(tmp_path)
    assert type(loader) is torch.utils.data.DataLoader and loader.num_workers == 0 and not loader.pin_memory
    assert [batch["name"][0] for batch in loader] == ["a", "b", "c"] and not loader.drop_last
    (tmp_path / "d.png").write_bytes(b"broken")
    with pytest.raises(DatasetLayoutError, match=f"^predict_dir {tmp_path}: cannot read image {tmp_path / 'd.png'}:"):
        predict_folder_loader(tmp_path)


def test_an_unknown_stage_sets_up_the_fit_splits(tmp_path):
    dm = TwoSplits(tmp_path)
    dm.setup("sanity_check")
    assert dm.found == ["tr", "va"] and dm.splits == {"train": "tr", "val": "va", "test": "va", "predict": "pr"}
    assert no_files().splits == {}  # a subclass fills them in


def test_the_predict_dir_argument_is_what_the_predict_loader_reads(tmp_path):
    save_image(tmp_path / "images" / "x.png")
    dm = no_files(predict_dir=str(tmp_path / "images"))
    dm.setup("predict")  # no predict split needed
    assert [batch["name"][0] for batch in dm.predict_dataloader()] == ["x"]


def test_with_a_predict_dir_only_the_predict_split_is_skipped(tmp_path, monkeypatch):
    save_image(tmp_path / "images" / "x.png")
    dm = TwoSplits(tmp_path, num_workers=1, pin_memory=True)
    dm.predict_dir = str(tmp_path / "images")
    dm.setup("predict")
    dm.setup("fit")
    assert dm.found == ["tr", "va"]  # the predict split is never looked for
    assert [batch["name"][0] for batch in dm.predict_dataloader()] == ["x"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pin_memory is honoured (not iterated here)
    loader = dm.predict_dataloader()
    assert loader.num_workers == 1 and loader.pin_memory


def test_setup_checks_label_values_only_when_asked_names_the_split_and_logs_its_size(tmp_path, caplog):
    dm = TwoSplits(tmp_path)
    dm.find_pairs = lambda split, labelled: pairs_with_bad_values(tmp_path, 2)
    with pytest.raises(DatasetLayoutError, match="^2 bad samples in TwoSplits tr:"):
        dm.setup("fit")
    relaxed = TwoSplits(tmp_path)
    relaxed.checks = SetupChecks(label_values=False)
    relaxed.find_pairs = dm.find_pairs
    with caplog.at_level("INFO", logger="dnlseg.data.folder"):
        relaxed.setup("fit")  # the values are checked when a label is loaded
    assert [r.getMessage() for r in caplog.records if "images" in r.getMessage()] == [
        "TwoSplits tr: 2 images",
        "TwoSplits va: 2 images",
    ]


def test_the_train_augmentation_uses_the_datamodules_ignore_index(tmp_path):
    from dnlseg.data.transforms import CategoryBalancedCrop

    dm = TwoSplits(tmp_path)
    dm.ignore_index = 100
    dm.setup("fit")
    crop = next(t for t in dm.datasets["train"].transform.transforms if isinstance(t, CategoryBalancedCrop))
    assert crop.ignore_index == 100
