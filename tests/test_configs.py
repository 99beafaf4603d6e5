"""Every paper-recipe config loads, builds its model and data, and trains one step on a tiny fixture dataset."""

import re
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from dnlseg.cli import run_cli
from dnlseg.context import DisentangledNonLocal2d, NonLocal2d
from dnlseg.data import ADE20KDataModule, CityscapesDataModule
from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tests.mmseg_helpers import mirrored_config
from tests.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = RECIPES
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
    assert re.search(r"^# Mirrors mmsegmentation 1\.2\.2 configs/\S+\.py", text, re.M)


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
            # not 2048x512 / 2049x1025 on a CPU: Cityscapes' fixture images stay at their 128x64
            "--model.inference.base_size=[128, 64]" if city else "--model.inference.base_size=[96, 64]",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
        ],
        run=False,
    )
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    # What the file says is what was built.
    assert isinstance(data, CityscapesDataModule if city else ADE20KDataModule)
    assert model.hparams.num_classes == (19 if city else 150) and model.class_names == data.class_names
    assert model.hparams.encoder_name == f"tu-resnet{recipe['depth']}c" and model.hparams.output_stride == 8
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


def metafile_results(config_name: str) -> dict[str, float]:
    """mmseg's model-zoo numbers for ``config_name`` (its ``metafile.yaml``): {"mIoU": ..., "mIoU(ms+flip)": ...}."""
    from mmseg_reference import config_path

    folder = config_path(config_name).parent
    entry = next(
        m
        for m in yaml.safe_load((folder / "metafile.yaml").read_text())["Models"]
        if m["Name"] == Path(config_name).stem
    )
    results = entry["Results"][0] if isinstance(entry["Results"], list) else entry["Results"]
    return results["Metrics"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_recipe_has_the_settings_of_the_mmseg_config_it_mirrors(config):
    """Everything the mmseg config sets that the recipe can say, read from mmseg's own config file."""
    from mmseg_reference import load_config

    mm = load_config(mirrored_config(config))
    ours = yaml.safe_load(config.read_text())
    model, data, trainer = ours["model"], ours["data"]["init_args"], ours["trainer"]
    backbone, head, aux = mm.model.backbone, mm.model.decode_head, mm.model.auxiliary_head
    # Encoder: ResNetV1c-50/101 at output stride 8 with contracted dilation = timm's resnet*c (tested for weights
    # and features in tests/models/test_mmseg_checkpoint.py)
    assert (backbone.type, backbone.strides, backbone.dilations) == ("ResNetV1c", (1, 2, 1, 1), (1, 1, 2, 4))
    assert backbone.contract_dilation and model["encoder_name"] == f"tu-resnet{backbone.depth}c"
    assert model["output_stride"] == 8
    # Heads
    block = {"NLHead": "dnlseg.context.NonLocal2d", "DNLHead": "dnlseg.context.DisentangledNonLocal2d"}
    if head.type == "FCNHead":
        assert (head.num_convs, head.concat_input, model["context"]) == (2, True, None)
    else:
        assert model["context"]["class_path"] == block[head.type]
        args = model["context"]["init_args"]
        assert args["reduction"] == head.reduction and head.use_scale and head.mode == "embedded_gaussian"
        if head.type == "DNLHead":  # mmseg's DNLHead temperature: its default unless the config sets one
            assert args["temperature"] == head.get("temperature", 0.05) and args["unary"] == "conv"
    assert model["head_channels"] == head.channels and model["aux_channels"] == aux.channels
    assert (aux.num_convs, aux.concat_input, aux.in_index) == (1, False, 2)
    assert model["dropout"] == head.dropout_ratio == aux.dropout_ratio
    assert model["align_corners"] == head.align_corners == aux.align_corners
    assert ours["data"]["class_path"].endswith("CityscapesDataModule" if head.num_classes == 19 else "ADE20KDataModule")
    # Loss: plain CE averaged over all pixels (avg_non_ignore False), aux weight 0.4
    for loss in (head.loss_decode, aux.loss_decode):
        assert loss.type == "CrossEntropyLoss" and not loss.get("avg_non_ignore", False)
    assert model["loss_normalization"] == "all" and model["ohem_threshold"] is None and "sampler" not in head
    assert model["aux_weight"] == aux.loss_decode.loss_weight and head.loss_decode.loss_weight == 1.0
    # Optimiser and schedule; paramwise keys mmengine acts on (lr_mult / decay_mult; not the DNL config's wd_mult)
    optimizer = mm.optim_wrapper.optimizer
    assert model["optimizer"]["init_args"] == {k: optimizer[k] for k in ("lr", "momentum", "weight_decay")}
    custom = mm.optim_wrapper.get("paramwise_cfg", {}).get("custom_keys", {})
    assert model["param_groups"] is None and not any({"lr_mult", "decay_mult"} & set(v) for v in custom.values())
    (poly,) = mm.param_scheduler
    assert poly.type == "PolyLR" and not poly.by_epoch and (poly.begin, poly.end) == (0, mm.train_cfg.max_iters)
    assert (model["poly_eta_min"], model["poly_power"], model["lr_scheduler"]) == (poly.eta_min, poly.power, None)
    assert trainer["max_steps"] == mm.train_cfg.max_iters and trainer["val_check_interval"] == mm.train_cfg.val_interval
    # Data: crop, batch 4 GPUs x per-GPU batch, normalisation, padding
    assert tuple(data["augmentation"]["crop_size"]) == tuple(mm.crop_size)
    assert trainer["devices"] * data["batch_size"] == 4 * mm.train_dataloader.batch_size
    preprocessor = mm.model.data_preprocessor
    assert preprocessor.mean == pytest.approx([255 * m for m in IMAGENET_MEAN])
    assert preprocessor.std == pytest.approx([255 * s for s in IMAGENET_STD])
    assert (preprocessor.pad_val, preprocessor.seg_pad_val, preprocessor.bgr_to_rgb) == (0, 255, True)
    resize = next(t for t in mm.train_pipeline if t.type == "RandomResize")
    assert tuple(data["augmentation"]["scale_base"]) == tuple(resize.scale)
    assert tuple(data["augmentation"]["scale_range"]) == tuple(resize.ratio_range)
    crop = next(t for t in mm.train_pipeline if t.type == "RandomCrop")
    assert data["augmentation"]["cat_max_ratio"] == crop.cat_max_ratio
    # Evaluation: whole or slide, and the test resize
    test_cfg = mm.model.test_cfg
    assert model["inference"]["mode"] == test_cfg.mode and model["inference"]["scales"] == [1.0]
    if test_cfg.mode == "slide":
        assert tuple(model["inference"]["crop_size"]) == tuple(test_cfg.crop_size)
        assert tuple(model["inference"]["stride"]) == tuple(test_cfg.stride)
    test_resize = next(t for t in mm.test_pipeline if t.type == "Resize")
    base_size = model["inference"]["base_size"]
    if base_size is None:  # the image's own size: Cityscapes' 2048x1024 images are at that scale
        assert tuple(test_resize.scale) == (2048, 1024) and test_resize.keep_ratio
    else:
        assert tuple(base_size) == tuple(test_resize.scale) and test_resize.keep_ratio
    # The header quotes the mirrored config's own model-zoo numbers
    header = next(line for line in config.read_text().splitlines() if line.startswith("# Reference mIoU"))
    for value in metafile_results(mirrored_config(config)).values():
        assert f"{value:.2f}" in header, (value, header)
