"""PredictionWriter: per image a label PNG in the dataset's encoding at the image's size, a colour PNG, an overlay."""

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from dnlseg.callbacks import PredictionWriter
from dnlseg.data import ADE20KDataModule, SyntheticDataModule
from dnlseg.data.folder import read_image
from dnlseg.models import SegmentationModule
from tests.datasets import ADE_SIZES, write_image_folder


def predict(datamodule, out, color=True):
    L.seed_everything(0)
    model = SegmentationModule(
        num_classes=datamodule.num_classes, encoder_name="resnet18", head_channels=16, aux_channels=0
    )
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
    dm = ADE20KDataModule(str(ade20k_root), num_workers=0)
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
    dm = SyntheticDataModule(num_train=2, num_val=2, image_size=32, batch_size=2)
    _, returned = predict(dm, tmp_path, color=False)
    labels = np.asarray(Image.open(tmp_path / "labels" / "synthetic_val_000001.png"))
    np.testing.assert_array_equal(labels, returned[0]["prediction"][1].numpy())
    assert not (tmp_path / "color").exists()


def test_predict_step_output_of_another_shape_is_refused(tmp_path):
    writer = PredictionWriter(str(tmp_path))
    with pytest.raises(TypeError, match="expects predict_step to return"):
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
