"""``dnlseg.deploy.torchscript``: the traced module equals eager PyTorch at two sizes for every head, and carries
its metadata inside the archive."""

import json

import pytest
import torch

from dnlseg.context import VARIANTS
from dnlseg.deploy.onnx_model import relative_error
from dnlseg.deploy.torchscript import (
    EXTRA_FILE,
    check_torchscript,
    export_torchscript,
    load_torchscript,
    read_torchscript_metadata,
    save_torchscript,
)
from tests.helpers import TINY_HEADS, tiny_segmenter, uint8_images

pytestmark = pytest.mark.slow  # a trace per head

SIZES = [(2, 3, 64, 96), (1, 3, 200, 264)]  # neither is the traced example's size (1, 3, 96, 128)


@pytest.mark.parametrize("variant", [*VARIANTS, *TINY_HEADS])
def test_torchscript_logits_equal_eager_at_two_sizes_for_every_head(variant, tmp_path):
    segmenter = tiny_segmenter(variant)
    path = tmp_path / "model.pt"
    save_torchscript(export_torchscript(segmenter), {"format_version": "1"}, path)
    loaded = load_torchscript(path)
    for i, shape in enumerate(SIZES):
        images = uint8_images(*shape, seed=i)
        with torch.no_grad():
            got, want = loaded(images), segmenter(images)
        assert got.shape == want.shape == (shape[0], 5, *shape[2:])
        assert relative_error(got, want) <= 1e-4, shape


def test_the_metadata_is_an_extra_file_of_the_archive(tmp_path):
    path = tmp_path / "model.pt"
    metadata = {"class_names": json.dumps(["a", "b"]), "output_stride": "8"}
    save_torchscript(export_torchscript(tiny_segmenter("gc")), metadata, path)
    assert read_torchscript_metadata(path) == metadata
    extra = {EXTRA_FILE: ""}
    torch.jit.load(str(path), _extra_files=extra)  # how a user without dnlseg reads it (a FutureWarning in torch 2.14)
    assert json.loads(extra[EXTRA_FILE])["output_stride"] == "8"


def test_the_check_against_eager_fails_for_another_network(tmp_path):
    path = tmp_path / "model.pt"
    save_torchscript(export_torchscript(tiny_segmenter("dnl")), {}, path)
    assert check_torchscript(path, tiny_segmenter("dnl"), (64, 64)) <= 1e-4
    with pytest.raises(ValueError, match="the TorchScript module's logits differ from eager PyTorch's by"):
        check_torchscript(path, tiny_segmenter("nl"), (64, 64))
