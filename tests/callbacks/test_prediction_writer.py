"""PredictionWriter: per image a label PNG in the dataset's encoding at the image's size, a colour PNG, an overlay."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from dnlseg.callbacks import PredictionWriter
from dnlseg.callbacks.prediction_writer import palette_table
from dnlseg.data import ADE20KDataModule, LoaderOptions, SyntheticDataModule
from dnlseg.data.folder import read_image
from dnlseg.models import SegmentationModule
from dnlseg.models.encoder import EncoderOptions
from tests.datasets import ADE_SIZES, write_image_folder
from tests.helpers import synthetic_loader, tiny_network


def predict(datamodule, out, color=True):
    L.seed_everything(0)
    network = tiny_network(encoder=EncoderOptions(name="resnet18"), aux_channels=0)
    model = SegmentationModule(num_classes=datamodule.num_classes, network=network)
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PredictionWriter(str(out), color=color)],
    )
    returned = trainer.predict(model, datamodule=datamodule, return_predictions=True)
    return model, returned


def test_ade20k_predictions_are_written_as_1_to_150_at_each_image_size(ade20k_root, tmp_path):
    dm = ADE20KDataModule(str(ade20k_root), loader=LoaderOptions(num_workers=0))
    _, returned = predict(dm, tmp_path)
    for (h, w), index, batch in zip(ADE_SIZES["validation"], (1, 2), returned, strict=True):
        labels = np.asarray(Image.open(tmp_path / "labels" / f"ADE_val_{index:08d}.png"))
        assert labels.shape == (h, w) and labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, batch["prediction"][0].numpy() + 1)
        colour = Image.open(tmp_path / "color" / f"ADE_val_{index:08d}.png")
        assert colour.mode == "RGB" and colour.size == (w, h)
        expected = np.asarray(dm.palette, dtype=np.uint8)[batch["prediction"][0].numpy()]
        np.testing.assert_array_equal(np.asarray(colour), expected)


def test_a_datamodule_without_a_benchmark_encoding_gets_class_ids(tmp_path):
    dm = SyntheticDataModule(num_train=2, num_val=2, image_size=32, loader=synthetic_loader(batch_size=2))
    _, returned = predict(dm, tmp_path, color=False)
    labels = np.asarray(Image.open(tmp_path / "labels" / "synthetic_val_000001.png"))
    np.testing.assert_array_equal(labels, returned[0]["prediction"][1].numpy())
    assert not (tmp_path / "color").exists()


def test_predict_step_output_of_another_shape_is_refused(tmp_path):
    writer = PredictionWriter(str(tmp_path))
    message = (
        r"^PredictionWriter expects predict_step to return \{'name': \[\.\.\.\], 'prediction': \(N, H, W\) ids\}; "
        r"got Tensor$"
    )
    with pytest.raises(TypeError, match=message):
        writer.write_on_batch_end(None, None, torch.zeros(1, 4, 4), None, None, 0)


def test_a_folder_of_images_gives_labels_colours_and_overlays_at_each_image_size(tmp_path):
    sizes = write_image_folder(tmp_path / "images")
    dm = SyntheticDataModule(num_train=2, num_val=2, image_size=32, predict_dir=str(tmp_path / "images"))
    _, returned = predict(dm, tmp_path / "out")
    assert sorted(name for batch in returned for name in batch["name"]) == sorted(sizes)
    palette = np.asarray(dm.palette, dtype=np.uint8)
    for name, (h, w) in sizes.items():
        labels = np.asarray(Image.open(tmp_path / "out" / "labels" / f"{name}.png"))
        assert labels.shape == (h, w) and labels.max() < dm.num_classes
        colour = np.asarray(Image.open(tmp_path / "out" / "color" / f"{name}.png"))
        np.testing.assert_array_equal(colour, palette[labels])
        overlay = np.asarray(Image.open(tmp_path / "out" / "overlay" / f"{name}.png")).astype(float)
        (path,) = (tmp_path / "images").glob(f"{name}.*")
        rgb = read_image(path).astype(float)  # grey and RGBA as RGB, as the model saw them
        np.testing.assert_allclose(overlay, 0.5 * rgb + 0.5 * colour, atol=1.01)


def write_batch(writer, trainer, ids, names=None):
    prediction = {"name": names, "prediction": torch.as_tensor(ids)}
    writer.write_on_batch_end(trainer, None, prediction, None, None, batch_idx=3)


def test_without_an_output_dir_predictions_go_under_the_runs_log_dir(tmp_path):
    datamodule = SimpleNamespace(palette=[(0, 0, 0), (10, 20, 30)], encode_prediction=lambda ids: ids + 7)
    trainer = SimpleNamespace(log_dir=str(tmp_path / "run"), datamodule=datamodule)
    writer = PredictionWriter()
    write_batch(writer, trainer, [[[0, 1], [1, 1]], [[0, 0], [0, 1]]])  # no names: <batch>_<index>
    out = tmp_path / "run" / "predictions"
    assert writer.resolve_dir(trainer) == out and writer.written == 2
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["000003_0.png", "000003_1.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "labels" / "000003_0.png")), [[7, 8], [8, 8]])
    colour = np.asarray(Image.open(out / "color" / "000003_1.png"))
    np.testing.assert_array_equal(colour[1, 1], (10, 20, 30))
    np.testing.assert_array_equal(colour[0, 0], (0, 0, 0))
    no_log_dir = SimpleNamespace(log_dir=None, datamodule=None)
    assert writer.resolve_dir(no_log_dir) == Path(".") / "predictions"


def test_a_datamodules_label_palette_makes_the_label_files_palette_pngs_of_the_encoded_values(tmp_path):
    label_palette = [(0, 0, 0), (10, 20, 30), (200, 100, 50)]  # e.g. Pascal VOC's colour map
    datamodule = SimpleNamespace(palette=None, encode_prediction=lambda ids: ids + 1, label_palette=label_palette)
    write_batch(PredictionWriter(str(tmp_path)), SimpleNamespace(datamodule=datamodule), [[[0, 1]]], names=["p"])
    with Image.open(tmp_path / "labels" / "p.png") as written:
        assert written.mode == "P" and np.asarray(written).tolist() == [[1, 2]]
        assert written.getpalette()[:9] == [0, 0, 0, 10, 20, 30, 200, 100, 50]
    datamodule.label_palette = None  # the other datasets: plain 8-bit values
    write_batch(PredictionWriter(str(tmp_path)), SimpleNamespace(datamodule=datamodule), [[[0, 1]]], names=["q"])
    assert Image.open(tmp_path / "labels" / "q.png").mode == "L"


def test_class_ids_above_255_are_refused_before_an_8_bit_png_wraps_them(tmp_path):
    trainer = SimpleNamespace(log_dir=None, datamodule=None)
    writer = PredictionWriter(str(tmp_path), color=False)
    write_batch(writer, trainer, [[[255]]], names=["fits"])
    assert np.asarray(Image.open(tmp_path / "labels" / "fits.png")).tolist() == [[255]]
    with pytest.raises(ValueError, match="prediction big has class ids > 255"):
        write_batch(writer, trainer, [[[256]]], names=["big"])
    assert not (tmp_path / "labels" / "big.png").exists() and writer.written == 1


def test_palette_table_puts_the_palette_first_and_black_after_it():
    table = palette_table([(1, 2, 3), (4, 5, 6)])
    assert table.shape == (256, 3) and table.dtype == np.uint8
    assert table[:3].tolist() == [[1, 2, 3], [4, 5, 6], [0, 0, 0]]
    assert palette_table(None) is None and palette_table([]) is None


def test_the_count_is_reset_at_predict_start_and_reported_at_the_end(tmp_path, caplog):
    writer = PredictionWriter(str(tmp_path))
    writer.written = 5
    writer.on_predict_start(None, None)
    assert writer.written == 0
    with caplog.at_level("INFO"):
        writer.on_predict_end(SimpleNamespace(), None)
    assert f"wrote 0 predictions (labels/, color/, overlay/) to {tmp_path}" in caplog.text


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_an_overlay_weight_outside_zero_to_one_is_refused(alpha):
    with pytest.raises(ValueError, match=rf"^overlay_alpha={alpha} must be in \[0, 1\]$"):
        PredictionWriter(overlay_alpha=alpha)
    PredictionWriter(overlay_alpha=0.0), PredictionWriter(overlay_alpha=1.0)  # the ends are valid


def test_the_overlay_blends_the_image_and_the_colours_exactly_and_counts_add_up_over_batches(tmp_path, caplog):
    from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    rgb = np.array([[[200, 100, 50], [0, 255, 128]]], dtype=np.float64)  # (1, 2, 3)
    image = torch.from_numpy(((rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)).float()
    trainer = SimpleNamespace(
        log_dir=str(tmp_path / "run"), datamodule=SimpleNamespace(palette=[(0, 0, 0), (90, 60, 30)])
    )
    writer = PredictionWriter(overlay_alpha=0.25)
    prediction = {"name": ["a"], "prediction": torch.tensor([[[1, 0]]])}
    writer.write_on_batch_end(trainer, None, prediction, None, {"image": image[None]}, batch_idx=0)
    overlay = np.asarray(Image.open(tmp_path / "run" / "predictions" / "overlay" / "a.png"))
    colour = np.array([[[90, 60, 30], [0, 0, 0]]])
    # rounded (and float32): within half a level of the blend in 0..255; in 0..256 the 255 would be 0.75 off
    np.testing.assert_allclose(overlay, 0.75 * rgb + 0.25 * colour, atol=0.51)
    with pytest.raises(ValueError):  # one name for two predictions: not silently cut to one
        writer.write_on_batch_end(
            trainer, None, {"name": ["b"], "prediction": torch.zeros(2, 1, 2, dtype=torch.long)}, None, None, 1
        )
    writer.write_on_batch_end(
        trainer, None, {"name": ["c", "d"], "prediction": torch.zeros(2, 1, 2, dtype=torch.long)}, None, None, 2
    )
    assert writer.written == 3  # 1 + 2 (the refused batch wrote its first file before failing, uncounted)
    plain = PredictionWriter(color=False)
    plain.written = 2
    with caplog.at_level("INFO"):
        plain.on_predict_end(trainer, None)
    assert f"wrote 2 predictions (labels/) to {tmp_path / 'run' / 'predictions'}" in caplog.text
