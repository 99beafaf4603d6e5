"""``dnlseg export``: what ``dnlseg predict`` writes is what the exported ONNX file (through the standalone
``examples/onnx_predict.py``) and TorchScript archive give; bad options, files and checkpoints end in one line and
leave nothing at ``--output``."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from dnlseg.cli.export import build, check_blocks, export
from dnlseg.data.cityscapes import CLASS_NAMES, PALETTE, TRAIN_ID_TO_LABEL_ID
from dnlseg.data.folder import image_folder_pairs, read_image
from dnlseg.deploy.onnx_model import onnxruntime_session, read_metadata, relative_error
from dnlseg.deploy.torchscript import read_torchscript_metadata
from dnlseg.errors import ExportError
from dnlseg.models.heads import DAHead
from dnlseg.models.network import SegmentationNetwork
from tests.helpers import tiny_head_network, uint8_images, wake_context_blocks
from tests.mmseg_helpers import mmseg_model, save_mmseg_checkpoint
from tests.recipes import SMALL_ON_ONE_CPU
from tests.test_reliability.runs import ROOT, dnlseg

CITYSCAPES = str(ROOT / "configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml")
SYNTHETIC = str(ROOT / "configs/synthetic/dnl.yaml")
ON_CPU = SMALL_ON_ONE_CPU  # the Cityscapes recipe, small
SMALL = ["--model.network.head_channels=16", "--model.network.aux_channels=8"]
EXAMPLE = ROOT / "examples" / "onnx_predict.py"


def write_checkpoint(path: Path, config: str, overrides: list[str]) -> Path:
    """A dnlseg checkpoint of the config's network with random weights, its context blocks woken (not identity)."""
    torch.manual_seed(0)
    module = wake_context_blocks(build(Path(config), overrides).model)
    for name, buffer in module.named_buffers():  # BatchNorm statistics that are not the identity's
        if name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
    state = {"pytorch-lightning_version": lightning.__version__, "state_dict": module.state_dict()}
    torch.save(state | {"epoch": 0, "global_step": 7}, path)
    return path


def run_example(*args: str) -> subprocess.CompletedProcess:
    """``python examples/onnx_predict.py ARGS`` in a process where importing torch, dnlseg or OpenCV fails."""
    code = (
        "import runpy, sys; sys.modules.update(torch=None, dnlseg=None, cv2=None); "
        f"sys.argv = {[str(EXAMPLE), *args]!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


@pytest.mark.slow
def test_predict_the_onnx_example_and_torchscript_agree_on_a_cityscapes_fixture(cityscapes_root, tmp_path):
    images = cityscapes_root / "leftImg8bit" / "val"
    ckpt = write_checkpoint(tmp_path / "trained.ckpt", CITYSCAPES, ON_CPU)
    args = ["-c", CITYSCAPES, *ON_CPU, "--ckpt_path", str(ckpt)]

    predict = dnlseg("predict", *args, f"--data.init_args.predict_dir={images}", f"--output_dir={tmp_path / 'predict'}")
    assert predict.returncode == 0, predict.stderr[-3000:]
    onnx_file = export([*args, "--output", str(tmp_path / "model.onnx")])
    torchscript = export([*args, "--output", str(tmp_path / "model.pt"), "--format", "torchscript"])
    example = run_example(str(onnx_file), str(images), str(tmp_path / "example"))
    assert example.returncode == 0, example.stderr[-3000:]

    pairs = image_folder_pairs(images)
    assert len(pairs) == 2
    traced = torch.jit.load(str(torchscript))
    for pair in pairs:
        want = np.asarray(Image.open(tmp_path / "predict" / "predictions" / "labels" / f"{pair.name}.png"))
        got = Image.open(tmp_path / "example" / f"{pair.name}.png")
        assert got.mode == "L"
        assert agreement(np.asarray(got), want) >= 0.9999
        rgb = torch.from_numpy(read_image(pair.image).transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            train_ids = traced(rgb).argmax(1)[0].numpy()
        assert agreement(TRAIN_ID_TO_LABEL_ID[train_ids], want) >= 0.9999
        assert len(np.unique(want)) > 1  # the check is not between two constant maps
    assert set(np.unique(want).tolist()) <= set(TRAIN_ID_TO_LABEL_ID[:19].tolist())  # labelIds, not train ids

    for metadata in (read_metadata(onnx_file), read_torchscript_metadata(torchscript)):
        assert json.loads(metadata["class_names"]) == list(CLASS_NAMES)
        assert json.loads(metadata["palette"]) == [list(rgb) for rgb in PALETTE]
        assert json.loads(metadata["label_values"]) == TRAIN_ID_TO_LABEL_ID[:19].tolist()
        assert metadata["label_encoding"].startswith("CityscapesDataModule.encode_prediction: (H, W) train ids -> ")
        assert json.loads(metadata["normalization"])["mean"] == [0.485, 0.456, 0.406]
        assert metadata["output_stride"] == "8" and metadata["checkpoint"] == "trained.ckpt"
        assert "name: resnet18" in metadata["config"] and "DisentangledNonLocal2d" in metadata["config"]
    assert json.loads(read_metadata(onnx_file)["attention"])["formulation"] == "chunked"


@pytest.mark.slow
def test_an_mmseg_zoo_checkpoint_exports_to_mmsegs_own_logits(tmp_path):
    """The recipe's ResNetV1c-50-D8 DNL network from an mmseg-format file, exported at 64x96: onnxruntime's logits
    against mmseg's ``encode_decode`` of the same weights (random, BatchNorm statistics included)."""
    reference = mmseg_model(Path(CITYSCAPES))
    zoo = save_mmseg_checkpoint(reference, tmp_path / "dnl_r50-d8_zoo.pth", list(CLASS_NAMES))
    output = tmp_path / "dnl.onnx"
    model = export(["-c", CITYSCAPES, "--ckpt_path", str(zoo), "--output", str(output), "--input_size", "64", "96"])
    images = uint8_images(2, 3, 64, 96)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        want = reference.encode_decode(
            (images / 255 - mean) / std, [{"img_shape": (64, 96), "ori_shape": (64, 96)}] * 2
        )
    got = onnxruntime_session(model).run(["logits"], {"image": images.numpy()})[0]
    # Two implementations (mmseg's materialised attention, ours fused; 50 layers with random BatchNorm statistics),
    # per pixel: seen 2.8e-4. A wrong key mapping or normalisation is O(1). The export itself is checked against
    # dnlseg's eager network at <= 1e-4 when it is written.
    assert relative_error(got, want) <= 1e-3
    assert read_metadata(model)["checkpoint"] == "dnl_r50-d8_zoo.pth"


@pytest.mark.slow
def test_the_example_names_the_fixed_size_of_a_static_export_in_one_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((64, 128, 3), dtype=np.uint8)).save(images / "wide.png")
    model = export(["-c", SYNTHETIC, *SMALL, "--output", str(tmp_path / "m.onnx"), "--input_size", "64", "96"])
    assert json.loads(read_metadata(model)["input"])["height"] == 64
    result = run_example(str(model), str(images), str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"onnx_predict: {images / 'wide.png'} is 64x128 (HxW) but {model} was exported for 64x96 images "
        "(dnlseg export --input_size): resize the images to that size, or export again without --input_size"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_checkpoint_that_does_not_fit_the_config_is_one_line_and_leaves_no_file(tmp_path):
    ckpt = write_checkpoint(tmp_path / "head16.ckpt", SYNTHETIC, SMALL)
    output = tmp_path / "out" / "model.onnx"
    result = dnlseg(
        "export", "-c", SYNTHETIC, "--model.network.head_channels=32", "--ckpt_path", str(ckpt), "--output", str(output)
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"dnlseg: --ckpt_path {ckpt}: the checkpoint does not fit the model built from this config")
    assert "network.decode_head.conv_in.0.weight: checkpoint (16, 128, 3, 3) vs model (32, 128, 3, 3)" in line
    assert line.endswith("export with the config the checkpoint was trained with (its run's config.yaml, or the "
                         "recipe that mirrors an mmseg checkpoint)")  # fmt: skip
    assert "does not fit" not in "".join(result.stderr.strip().splitlines()[:-1])  # the error is the last line only
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_config_that_builds_the_attention_matrix_is_refused(tmp_path):
    output = tmp_path / "m.onnx"
    with pytest.raises(
        ExportError, match=r"^model.network.context.init_args.attention=materialized \(decode_head.context\) "
    ):
        export(
            [
                "-c",
                SYNTHETIC,
                *SMALL,
                "--model.network.context.init_args.attention=materialized",
                "--output",
                str(output),
            ]
        )
    assert list(tmp_path.iterdir()) == []


def test_a_decode_head_building_the_attention_matrix_is_refused_naming_its_own_option():
    network = SegmentationNetwork.from_options(
        tiny_head_network("danet", decode_head=functools.partial(DAHead, attention="materialized")), num_classes=3
    )
    with pytest.raises(
        ExportError, match=r"^model.network.decode_head.init_args.attention=materialized \(decode_head.pam\)"
    ):
        check_blocks(network)
    check_blocks(SegmentationNetwork.from_options(tiny_head_network("danet"), num_classes=3))  # fused: exported


@pytest.mark.slow
def test_a_failed_check_leaves_nothing_at_the_output(tmp_path, monkeypatch):
    from dnlseg.deploy import onnx_model

    def wrong(path, segmenter, size, tolerance=1e-4):
        assert path.is_file() and path.parent == tmp_path  # the check reads the written file, beside --output
        raise ExportError("onnxruntime's logits differ")

    monkeypatch.setattr(onnx_model, "check_onnx", wrong)
    with pytest.raises(ExportError, match="onnxruntime's logits differ"):
        export(["-c", SYNTHETIC, *SMALL, "--output", str(tmp_path / "m.onnx")])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--attention", "attention_op"], r"--opset 20 is too old for --attention attention_op .*use --opset 23"),
        (["--opset", "17"], r"--opset 17 is too old for --attention chunked"),
        (["--format", "torchscript", "--input_size", "64", "64"], r"--input_size: a TorchScript trace takes any "),
        (["--format", "torchscript", "--opset", "20"], r"--opset and --attention apply to --format onnx"),
        (["--input_size", "0", "64"], r"--input_size 0 64: both must be >= 1"),
        (["--ckpt_path", "missing.ckpt"], r"ckpt_path=missing.ckpt: no such checkpoint file"),
    ],
)
def test_options_that_cannot_work_are_refused_before_the_model_is_built(options, message, tmp_path, monkeypatch):
    monkeypatch.setattr("dnlseg.cli.export.build", lambda *a: pytest.fail("the model was built"))
    with pytest.raises(ValueError, match=message):
        export(["-c", SYNTHETIC, "--output", str(tmp_path / "m.onnx"), *options])
    assert list(tmp_path.iterdir()) == []


def test_an_existing_output_is_kept_unless_overwrite_is_given(tmp_path, monkeypatch):
    monkeypatch.setattr("dnlseg.cli.export.build", lambda *a: pytest.fail("the model was built"))
    output = tmp_path / "model.onnx"
    output.write_bytes(b"an earlier export")
    with pytest.raises(ExportError, match=f"--output {output} exists: choose another path, or add --overwrite"):
        export(["-c", SYNTHETIC, "--output", str(output)])
    assert output.read_bytes() == b"an earlier export"
