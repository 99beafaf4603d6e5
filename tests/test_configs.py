"""Every paper-recipe config loads, builds its model and data, and trains one step on a tiny fixture dataset."""

import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from dnlseg.cli import run_cli
from dnlseg.context import DisentangledNonLocal2d, NonLocal2d
from dnlseg.data import ADE20KDataModule, CityscapesDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(ROOT.glob("configs/cityscapes/*.yaml")) + sorted(ROOT.glob("configs/ade20k/*.yaml"))
NAME = re.compile(r"(?P<variant>baseline|nl|dnl)_r(?P<depth>50|101)_d8_(?P<h>\d+)x(?P<w>\d+)_(?P<k>\d+)k")


def test_the_recipe_configs_are_all_there():
    names = {f"{p.parent.name}/{p.stem}" for p in CONFIGS}
    assert names == {
        "cityscapes/baseline_r50_d8_512x1024_80k",
        "cityscapes/nl_r50_d8_512x1024_80k",
        "cityscapes/dnl_r50_d8_512x1024_80k",
        "cityscapes/nl_r101_d8_769x769_80k",
        "cityscapes/dnl_r101_d8_769x769_80k",
        "ade20k/nl_r50_d8_512x512_160k",
        "ade20k/dnl_r50_d8_512x512_160k",
        "ade20k/nl_r101_d8_512x512_160k",
        "ade20k/dnl_r101_d8_512x512_160k",
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_header_gives_the_command_and_the_reference(config):
    text = config.read_text()
    assert f"dnlseg fit -c configs/{config.parent.name}/{config.name}" in text
    assert "Reference mIoU (SCIENCE.md section 5" in text


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds_and_trains_one_step(config, cityscapes_root, ade20k_root, tmp_path):
    recipe = NAME.fullmatch(config.stem).groupdict()
    city = config.parent.name == "cityscapes"
    cli = run_cli(
        [
            "-c",
            str(config),
            # the recipe runs on 4 GPUs; here: one CPU process, tiny crops
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
            "--trainer.sync_batchnorm=false",
            "--trainer.max_steps=1",
            "--trainer.val_check_interval=1",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--data.init_args.root={cityscapes_root if city else ade20k_root}",
            "--data.init_args.augmentation.crop_size=[32, 32]",
            "--data.init_args.augmentation.scale_base=[96, 64]",
            *([] if city else ["--model.inference.base_size=[96, 64]"]),  # not 2048x512 on a CPU
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
        ],
        run=False,
    )
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    # What the file says is what was built.
    assert isinstance(data, CityscapesDataModule if city else ADE20KDataModule)
    assert model.hparams.num_classes == (19 if city else 150) and model.class_names == data.class_names
    assert model.hparams.encoder_name == f"resnet{recipe['depth']}" and model.hparams.output_stride == 8
    assert model.hparams.head_channels == 512 and model.aux_weight == 0.4
    context = {"baseline": nn.Identity, "nl": NonLocal2d, "dnl": DisentangledNonLocal2d}[recipe["variant"]]
    assert isinstance(model.network.decode_head.context, context)
    assert trainer.max_steps == 1 and cli.config["trainer"]["max_steps"] == 1
    # The recipe's training settings, as in the file (before the overrides above).
    raw = config.read_text()
    assert f"max_steps: {int(recipe['k']) * 1000}" in raw and "sync_batchnorm: true" in raw and "strategy: ddp" in raw
    assert f"crop_size: [{recipe['h']}, {recipe['w']}]" in raw
    # Drop the checkpoint callback: a ResNet-101 checkpoint is hundreds of MB for nothing here.
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, ModelCheckpoint)]
    before = {k: v.clone() for k, v in model.network.decode_head.state_dict().items() if v.is_floating_point()}
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/mIoU" in trainer.callback_metrics  # one validation batch in the config's inference mode
    after = model.network.decode_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_configs_that_ask_for_determinism_leave_cudnn_benchmark_off():
    """cuDNN autotuning picks kernels by timing, so results vary run to run: never on with ``deterministic``."""
    import yaml

    for config in ROOT.glob("configs/**/*.yaml"):
        trainer = yaml.safe_load(config.read_text()).get("trainer") or {}
        if trainer.get("deterministic"):
            assert not trainer.get("benchmark"), f"{config}: trainer.benchmark with trainer.deterministic"
