"""Config mistakes fail before anything is built, with a message that names the YAML key."""

from __future__ import annotations

import pytest
import torch

from dnlseg.cli.lightning_cli import run_cli
from dnlseg.errors import ConfigError, UsageError
from tests.test_reliability.runs import ROOT, dnlseg, last_ckpt, tiny_config

SYNTHETIC = str(ROOT / "configs/synthetic/dnl.yaml")
CITYSCAPES = str(ROOT / "configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml")
ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-c", SYNTHETIC, "--model.network.encoder.output_stride=16", "--data.init_args.image_size=40"],
            "data.init_args.image_size=40 does not fit model.network.encoder.output_stride=16: each side must be a "
            "multiple of 16",
        ),
        (
            ["-c", CITYSCAPES, *ON_CPU, "--data.init_args.augmentation.crop_size=[500, 500]"],
            "data.init_args.augmentation.crop_size=[500, 500] does not fit model.network.encoder.output_stride=8",
        ),
        (
            ["-c", SYNTHETIC, "--data.init_args.loader.num_workers=-1"],
            "data.init_args.loader.num_workers=-1 must be >= 0",
        ),
        (
            ["-c", CITYSCAPES, *ON_CPU, "--data.init_args.root=/no/such/cityscapes"],
            "data.init_args.root=/no/such/cityscapes does not exist",
        ),
        (["-c", CITYSCAPES, *ON_CPU], "data.init_args.root is not set and neither is $CITYSCAPES_ROOT"),
        (
            ["-c", SYNTHETIC, "--trainer.accelerator=cpu", "--trainer.precision=16-mixed"],
            "trainer.precision=16-mixed cannot run on the CPU",
        ),
        (
            ["-c", SYNTHETIC, "--model.loss.on_nonfinite=skip", "--trainer.strategy=ddp", "--trainer.devices=2"],
            "model.loss.on_nonfinite=skip needs a single process",
        ),
    ],
    ids=[
        "image-size-vs-stride",
        "crop-vs-stride",
        "num-workers",
        "root-missing",
        "root-unset",
        "fp16-cpu",
        "skip-under-ddp",
    ],
)
def test_config_error_names_the_key_before_anything_is_built(args, message, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_ROOT", raising=False)
    built = []
    monkeypatch.setattr("dnlseg.cli.lightning_cli.DnlsegCLI.instantiate_classes", lambda self: built.append(self))
    with pytest.raises(ConfigError) as error:
        run_cli(args, run=False)
    assert message in str(error.value)
    assert built == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-c", SYNTHETIC, "--model.network.context.init_args.temperature=0"],
            "model.network.context (DisentangledNonLocal2d): model.network.context.init_args.temperature=0.0 "
            "must be > 0 (the paper uses 0.05)",
        ),
        (
            ["-c", SYNTHETIC, "--model.network.head_channels=16", "--model.network.context.init_args.reduction=3"],
            "model.network.context (DisentangledNonLocal2d): in_channels=16 is not divisible by "
            "model.network.context.init_args.reduction=3: choose a reduction that divides the channel count "
            "(e.g. 1, 2, 4)",
        ),
        (
            ["-c", str(ROOT / "configs/synthetic/gc.yaml"), "--model.network.context.init_args.reduction=0"],
            "model.network.context (GlobalContext2d): in_channels=128 must be a positive multiple of "
            "model.network.context.init_args.reduction=0 (the transform's bottleneck is in_channels / reduction wide)",
        ),
    ],
    ids=["temperature", "reduction", "gc-reduction"],
)
def test_a_value_the_context_block_refuses_is_one_line_naming_its_key(args, message):
    """The block's constructor is the check (no second copy before it); the error names the config key."""
    with pytest.raises(ConfigError) as error:
        run_cli(args, run=False)
    assert str(error.value) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="trainer.accelerator=gpu but no CUDA GPU is visible"):
        run_cli(["-c", CITYSCAPES, "--data.init_args.root=/tmp"], run=False)


def test_unknown_context_variant_is_rejected_by_the_parser_in_one_line_naming_the_key_and_the_choices(capsys):
    with pytest.raises(UsageError) as error:
        run_cli(["-c", SYNTHETIC, "--model.network.context.init_args.unary=conv3x3"], run=False)
    assert (
        str(error.value)
        == "model.network.context.init_args.unary=conv3x3: expected one of 'conv', 'shared_key' or null"
    )
    assert capsys.readouterr().err == ""  # no usage printed


@pytest.mark.slow
def test_the_command_exits_with_the_message_and_no_traceback(tmp_path):
    config = tiny_config(tmp_path)
    result = dnlseg("fit", "-c", str(config), "--model.network.context.init_args.temperature=0")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "dnlseg: model.network.context (DisentangledNonLocal2d): "
        "model.network.context.init_args.temperature=0.0 must be > 0 (the paper uses 0.05)"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started

    unknown = dnlseg("fit", "-c", str(config), "--model.network.context.class_path=dnlseg.context.DisentangledNonLocal")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert unknown.stderr.splitlines()[-1] == (
        "dnlseg: model.network.context: no class dnlseg.context.DisentangledNonLocal "
        "(did you mean dnlseg.context.DisentangledNonLocal2d?)"
    )


@pytest.mark.slow
def test_resuming_with_an_incompatible_model_config_lists_the_differing_shapes(tmp_path):
    config = tiny_config(tmp_path, max_steps=2)
    assert dnlseg("fit", "-c", str(config)).returncode == 0
    assert last_ckpt(tmp_path).exists()
    result = dnlseg("fit", "-c", str(config), "--ckpt_path", "last", "--model.network.head_channels=16")
    assert result.returncode == 1
    assert "dnlseg: the checkpoint does not fit the model built from this config" in result.stderr
    assert "network.decode_head.context.query.weight: checkpoint (4, 8, 1, 1) vs model (8, 16, 1, 1)" in result.stderr
    assert "Traceback" not in result.stderr
