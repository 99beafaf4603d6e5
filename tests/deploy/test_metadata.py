"""``dnlseg.deploy.metadata``: the label value of every class in each dataset's own encoding, and every value a
string a standalone reader can parse."""

import json

from dnlseg.data import ADE20KDataModule, CityscapesDataModule, ImageMaskDataModule, SyntheticDataModule
from dnlseg.data.cityscapes import TRAIN_ID_TO_LABEL_ID
from dnlseg.deploy.metadata import build_metadata, label_values
from tests.datasets import OWN_CLASSES


def test_label_values_are_each_datasets_encoding_of_its_train_ids():
    assert label_values(CityscapesDataModule(), 19) == TRAIN_ID_TO_LABEL_ID[:19].tolist()  # labelIds: 7, 8, 11, ...
    assert label_values(ADE20KDataModule(), 150) == list(range(1, 151))  # 0 is "other" in ADE20K's files
    assert label_values(ImageMaskDataModule(classes=OWN_CLASSES), 5) == [0, 1, 2, 3, 7]  # yellow's own value 7
    assert label_values(SyntheticDataModule(), 5) == [0, 1, 2, 3, 4]


def test_every_value_is_a_string_and_the_structured_ones_are_json():
    metadata = build_metadata(
        datamodule=CityscapesDataModule(),
        num_classes=19,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        input_size=(512, 1024),
        output_stride=8,
        align_corners=False,
        attention={"formulation": "chunked"},
        inference={"mode": "whole"},
        checkpoint=None,
        config="model:\n  output_stride: 8\n",
    )
    assert all(isinstance(value, str) for value in metadata.values())
    assert json.loads(metadata["input"]) == {
        "name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "height": 512, "width": 1024,
        "batch": None,
    }  # fmt: skip
    assert json.loads(metadata["class_names"])[:2] == ["road", "sidewalk"]
    assert json.loads(metadata["palette"])[0] == [128, 64, 128]
    assert metadata["label_encoding"].startswith("CityscapesDataModule.encode_prediction: (H, W) train ids -> ")
    assert json.loads(metadata["checkpoint"]) is None and metadata["config"] == "model:\n  output_stride: 8\n"
    assert (metadata["output_stride"], metadata["align_corners"], metadata["ignore_index"]) == ("8", "false", "255")
