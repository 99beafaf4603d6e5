"""Every recipe is found in configs/, composes its family's shared part, names its command, and (the recipes that
mirror mmseg) loads, builds its model and data, trains one step and has the settings of mmseg's own config."""

import itertools
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from dnlseg.cli.lightning_cli import run_cli
from dnlseg.context import CrissCrossAttention2d, DisentangledNonLocal2d, GlobalContext2d, NonLocal2d
from dnlseg.data import ADE20KDataModule, CityscapesDataModule, VOCDataModule
from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dnlseg.models.heads import ANNHead, DAHead, DecodeHead, EMAHead, ISAHead, OCRHead
from dnlseg.models.schedule import mmseg_total_iters
from tests.mmseg_helpers import mirrored_config
from tests.recipes import (
    BASE,
    CONFIGS,
    MMSEG_FAMILIES,
    MMSEG_RECIPES,
    NOT_MIRRORED,
    ONE_CPU_PROCESS,
    RECIPES,
    SHARED_PREFIX,
    config_files,
    recipe,
    recipe_id,
    recipes,
    repeated_blocks,
    resolved,
    shared_files,
)

NAME = re.compile(
    r"(?P<variant>baseline|nl|dnl|gcnet|ccnet|danet|ann|isanet|emanet|ocrnet)_r(?P<depth>50|101)_d8_"
    r"(?P<h>\d+)x(?P<w>\d+)_(?P<k>\d+)k"
)
# What a recipe's name says it builds: the context head's block, or a head of its own layout.
VARIANT_HEADS = {
    "baseline": nn.Identity,
    "nl": NonLocal2d,
    "dnl": DisentangledNonLocal2d,
    "gcnet": GlobalContext2d,
    "ccnet": CrissCrossAttention2d,
    "danet": DAHead,
    "ann": ANNHead,
    "isanet": ISAHead,
    "emanet": EMAHead,
    "ocrnet": OCRHead,
}
GPUS_X_BATCH = re.compile(r"_(?P<gpus>\d+)xb(?P<batch>\d+)-")  # mmseg's config names: 4xb2 = 4 GPUs x 2 images
# mmseg's metafile lists some models under another name than their config's
METAFILE_NAMES = {"emanet_r50-d8_4xb2-80k_cityscapes-512x1024": "eemanet_r50-d8_4xb2-80k_cityscapes-512x1024"}
# An mmseg family's DataModule, class count, fixture (tests/conftest.py) and test resize on the fixture's images:
# not 2048x512 / 2049x1025 on a CPU (Cityscapes' fixture images stay at their 128x64).
FAMILIES = {
    "cityscapes": (CityscapesDataModule, 19, "cityscapes_root", "[128, 64]"),
    "ade20k": (ADE20KDataModule, 150, "ade20k_root", "[96, 64]"),
    "voc": (VOCDataModule, 21, "voc_root", "[96, 64]"),
}


def test_a_new_recipe_file_is_found_without_naming_it(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    assert [recipe_id(p) for p in recipes(configs)] == [recipe_id(p) for p in RECIPES]
    (configs / "synthetic" / "new_head.yaml").write_text((configs / "synthetic" / "dnl.yaml").read_text())
    (configs / "synthetic" / f"{SHARED_PREFIX}other_schedule.yaml").write_text("seed_everything: 1\n")
    found = [recipe_id(p) for p in recipes(configs)]
    assert "synthetic/new_head" in found and "synthetic/_other_schedule" not in found
    assert len(found) == len(RECIPES) + 1


def test_every_family_has_recipes_and_the_mmseg_families_mirror_distinct_configs():
    assert {p.parent.name for p in RECIPES} >= {*MMSEG_FAMILIES, "synthetic", "own_data"}
    mirrored = [mirrored_config(p) for p in MMSEG_RECIPES]
    assert len(set(mirrored)) == len(mirrored) == len(MMSEG_RECIPES) > 0
    assert set(NOT_MIRRORED) <= {recipe_id(p) for p in RECIPES}  # an exception names a recipe that exists


def test_the_voc_dnl_recipe_is_the_mirrored_nl_recipe_with_the_dnl_head_of_the_ade20k_recipe():
    """mmseg has no DNL config for VOC (``NOT_MIRRORED``): everything but the head is checked through the NL recipe."""
    dnl, nl, ade = (
        resolved(recipe(f"{name}_r50_d8_512x512_{k}"))
        for name, k in (("voc/dnl", "20k"), ("voc/nl", "20k"), ("ade20k/dnl", "160k"))
    )
    assert (
        dnl["model"]["network"]["context"] == ade["model"]["network"]["context"]
    )  # mmseg's DNLHead settings (ADE20K's parity test)
    for config in (dnl, nl):
        drop(config, "model.network.context")
        drop(config, "trainer.logger.init_args.name")
    assert dnl == nl


def own_keys(config_file: Path) -> dict:
    """What a config file itself says: its keys (dotted in a file that composes another) and values, without
    ``config``."""
    return {k: v for k, v in yaml.safe_load(config_file.read_text()).items() if k != "config"}


def shared_part(config_file: Path) -> Path | None:
    """The file a config file composes (its ``config:`` key, relative to its folder), or None."""
    name = yaml.safe_load(config_file.read_text()).get("config")
    return None if name is None else (config_file.parent / name).resolve()


def with_files_loaded(value, folder: Path):
    """``value`` with every string that names a YAML file (relative to ``folder``) replaced by that file's content,
    as jsonargparse loads a list item or a value given as a path (``trainer.callbacks: [../_callbacks/x.yaml]``)."""
    if isinstance(value, dict):
        return {k: with_files_loaded(v, folder) for k, v in value.items()}
    if isinstance(value, list):
        return [with_files_loaded(v, folder) for v in value]
    if isinstance(value, str) and value.endswith(".yaml"):
        path = folder / value
        return with_files_loaded(yaml.safe_load(path.read_text()), path.parent)
    return value


def composed(config_file: Path) -> dict:
    """The settings ``config_file`` makes, layered as configs/README.md says jsonargparse does it: first the file its
    ``config:`` key names (itself composed), then the file's own keys in order; a dotted key replaces that one entry,
    a key without a dot its whole section; a value that names a YAML file is that file's content."""
    shared = shared_part(config_file)
    settings = composed(shared) if shared is not None else {}
    for key, value in own_keys(config_file).items():
        *parents, last = key.split(".")
        section = settings
        for parent in parents:
            section = section.setdefault(parent, {})
        section[last] = with_files_loaded(value, config_file.parent)
    return settings


def lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def drop(config: dict, dotted: str) -> None:
    """Remove ``dotted`` from ``config`` where it is there."""
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.get(key) or {}
    if isinstance(config, dict):
        config.pop(last, None)


def contains(whole, given) -> bool:
    """Whether ``whole`` (a resolved config, every default filled in) holds everything ``given`` sets."""
    if isinstance(given, dict):
        return isinstance(whole, dict) and all(k in whole and contains(whole[k], v) for k, v in given.items())
    if isinstance(given, list):
        return isinstance(whole, list) and len(whole) == len(given) and all(map(contains, whole, given))
    return whole == given


@pytest.mark.parametrize("config", RECIPES, ids=recipe_id)
def test_recipe_composes_its_family_file_which_composes_at_most_the_shared_base(config):
    """recipe -> ``<family>/_<name>.yaml`` -> at most one file of ``configs/_base/``, which composes nothing; a file
    that composes another names its own settings by dotted keys (a nested section would replace the shared one)."""
    family = shared_part(config)
    if family is None:  # a family of one: the recipe is the whole file
        return
    assert family.parent == config.parent and family.name.startswith(SHARED_PREFIX) and family.is_file()
    chain = [config, family]
    base = shared_part(family)
    if base is not None:
        assert base.parent == BASE and base.is_file(), base
        assert shared_part(base) is None, f"{base} composes another file: at most recipe -> family -> base"
        chain.append(base)
    for upper, lower in itertools.pairwise(chain):
        below = composed(lower)
        whole = [key for key in own_keys(upper) if "." not in key and isinstance(below.get(key), dict)]
        assert not whole, f"{upper}: {whole} would replace the whole section of {lower}; write dotted keys"


def test_every_shared_file_is_composed():
    for shared in shared_files():
        assert any(shared_part(p) == shared for p in RECIPES), f"{shared} is composed by no recipe"
    for base in sorted(BASE.glob("*.yaml")):
        assert any(shared_part(p) == base for p in shared_files()), f"{base} is composed by no family file"


@pytest.mark.parametrize("config", RECIPES, ids=recipe_id)
def test_recipe_resolves_to_its_shared_settings_and_its_own(config):
    """What ``--print_config`` shows: every setting of the files it composes unless a later one sets it, and its own."""
    whole, own = resolved(config), with_files_loaded(own_keys(config), config.parent)  # a head given by path
    assert "config" not in whole  # the whole config: it resumes without the shared files
    for key, value in own.items():
        assert contains(lookup(whole, key), value), (key, value)
    assert contains(whole, composed(config))


def test_a_dotted_key_changes_one_entry_of_a_composed_section_and_a_nested_one_replaces_it(tmp_path):
    """The layering the family files and recipes rely on and ``composed`` models (configs/README.md), as jsonargparse
    does it: over a family (itself over the base) `trainer.max_steps` keeps the 4-GPU trainer, `trainer:` drops it."""
    shutil.copytree(CONFIGS, tmp_path / "configs")
    folder = tmp_path / "configs" / "cityscapes"
    for layout, own, devices in (
        ("dotted", "trainer.max_steps: 5\n", 4),
        ("nested", "trainer:\n  max_steps: 5\n", "auto"),  # Trainer's default
    ):
        probe = folder / f"{layout}.yaml"
        probe.write_text(f"config: _512x1024_80k.yaml\n{own}")
        trainer, settings = resolved(probe)["trainer"], composed(probe)["trainer"]
        assert trainer["max_steps"] == settings["max_steps"] == 5, layout
        assert trainer["devices"] == settings.get("devices", "auto") == devices, layout


def config_id(path: Path) -> str:
    return str(path.relative_to(CONFIGS).with_suffix(""))


def test_repeated_blocks_are_six_setting_lines_in_two_files_whatever_their_comments(tmp_path):
    block = "a:\n  b: 1\n  c: [1, 2]\n  d:\n    - class_path: x.Y\n      init_args: {k: 2}\n"
    (tmp_path / "one.yaml").write_text("top: 0\n" + block)
    (tmp_path / "two.yaml").write_text(
        "# header\n" + block.replace("  c:", "\n  # note\n  c:").replace("1\n", "1  # why\n")
    )
    (tmp_path / "five.yaml").write_text(block.rsplit("      init_args", 1)[0])  # its first five lines
    (tmp_path / "composed.yaml").write_text(block.replace("  d:\n", "  d:\n    - ../_x/y.yaml\n"))  # split by a file
    files = sorted(tmp_path.glob("*.yaml"))
    found = {(a.stem, b.stem): lines for (a, b), lines in repeated_blocks(files).items()}
    assert found == {("one", "two"): [(2, 2)]}  # line 2 of each: the block starts at `a:`
    assert repeated_blocks(files, lines=5).keys() >= {(tmp_path / "five.yaml", tmp_path / "one.yaml")}
    assert repeated_blocks(files, skip_sections=("a",)) == {}


def test_no_block_of_six_setting_lines_is_written_in_two_config_files():
    """Each shared setting is written once: what every dataset family shares in configs/_base/, a callback in
    configs/_callbacks/, a value several families name in a ``configs/_<kind>/`` folder, a family's in its file."""
    found = {f"{config_id(a)} ~ {config_id(b)}": lines for (a, b), lines in repeated_blocks(config_files()).items()}
    assert not found, f"6+ setting lines written again (files: (line, line) where each block starts): {found}"


def test_every_shared_callback_file_is_listed_by_a_family_and_holds_one_callback():
    shared = sorted((CONFIGS / "_callbacks").rglob("*.yaml"))
    named = "\n".join(p.read_text() for p in config_files() if p not in shared)
    for path in shared:
        callback = yaml.safe_load(path.read_text())
        assert set(callback) <= {"class_path", "init_args"} and "class_path" in callback, path
        assert f"_callbacks/{path.relative_to(CONFIGS / '_callbacks')}" in named, f"{path} is listed by no config"


@pytest.mark.parametrize("config", RECIPES, ids=recipe_id)
def test_recipe_header_gives_its_command(config):
    assert f"dnlseg fit -c configs/{config.parent.name}/{config.name}" in config.read_text()


@pytest.mark.parametrize("config", MMSEG_RECIPES, ids=recipe_id)
def test_config_header_gives_the_command_and_the_reference(config):
    text = config.read_text()
    assert "Reference mIoU (docs/science.md section 5" in text
    assert re.search(r"^# Mirrors mmsegmentation 1\.2\.2 configs/\S+\.py", text, re.M)


@pytest.mark.slow
@pytest.mark.parametrize("config", MMSEG_RECIPES, ids=recipe_id)
def test_config_builds_and_trains_one_step(config, request, tmp_path):
    recipe = NAME.fullmatch(config.stem).groupdict()
    datamodule, num_classes, fixture, base_size = FAMILIES[config.parent.name]
    cli = run_cli(
        [
            "-c",
            str(config),
            # the recipe runs on 4 GPUs; here: one CPU process, tiny crops
            *ONE_CPU_PROCESS,
            "--trainer.max_steps=1",
            "--trainer.val_check_interval=1",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--data.init_args.root={request.getfixturevalue(fixture)}",
            "--data.init_args.augmentation.crop_size=[32, 32]",
            "--data.init_args.augmentation.scale_base=[96, 64]",
            f"--model.inference.base_size={base_size}",
            "--data.init_args.loader.batch_size=2",
            "--data.init_args.loader.num_workers=0",
        ],
        run=False,
    )
    model, data, trainer = cli.model, cli.datamodule, cli.trainer
    # What the file says is what was built.
    assert isinstance(data, datamodule)
    assert model.hparams.num_classes == num_classes and model.class_names == data.class_names
    encoder = model.hparams.network["encoder"]
    assert encoder["name"] == f"tu-resnet{recipe['depth']}c" and encoder["output_stride"] == 8
    assert model.hparams.network["head_channels"] == 512 and model.aux_weight == 0.4
    head = VARIANT_HEADS[recipe["variant"]]
    built = model.network.decode_head
    assert isinstance(built, head) if issubclass(head, DecodeHead) else isinstance(built.context, head)
    assert trainer.max_steps == 1 and cli.config["trainer"]["max_steps"] == 1
    # The recipe's training settings, as in the file (before the overrides above).
    whole = resolved(config)
    settings = (whole["trainer"]["max_steps"], whole["trainer"]["sync_batchnorm"], whole["trainer"]["strategy"])
    assert settings == (int(recipe["k"]) * 1000, True, "ddp")
    assert whole["data"]["init_args"]["augmentation"]["crop_size"] == [int(recipe["h"]), int(recipe["w"])]
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
    for config in RECIPES:
        trainer = resolved(config)["trainer"]
        if trainer.get("deterministic"):
            assert not trainer.get("benchmark"), f"{config}: trainer.benchmark with trainer.deterministic"


def metafile_results(config_name: str) -> dict[str, float]:
    """mmseg's model-zoo numbers for ``config_name`` (its ``metafile.yaml``): {"mIoU": ..., "mIoU(ms+flip)": ...}."""
    from mmseg_reference import config_path

    folder = config_path(config_name).parent
    name = METAFILE_NAMES.get(Path(config_name).stem, Path(config_name).stem)
    entry = next(m for m in yaml.safe_load((folder / "metafile.yaml").read_text())["Models"] if m["Name"] == name)
    results = entry["Results"][0] if isinstance(entry["Results"], list) else entry["Results"]
    return results["Metrics"]


def context_head(block: str, **init_args) -> dict:
    return {"decode_head": None, "context": {"class_path": f"dnlseg.context.{block}", "init_args": init_args}}


def own_head(head: str, **init_args) -> dict:
    return {"context": None, "decode_head": {"class_path": f"dnlseg.models.heads.{head}", "init_args": init_args}}


def mirrored_head(head) -> dict:
    """The ``model.network`` settings that build mmseg's decode head of config ``head`` (what it sets, and its
    defaults where it sets nothing), by head type."""
    width = {"head_channels": head.channels}
    if head.type in ("FCNHead", "NLHead", "DNLHead", "GCHead", "CCHead"):  # FCNHead's layout: the context head
        assert head.get("num_convs", 2) == 2 and head.get("concat_input", True)
    if head.type == "FCNHead":
        return {**width, "context": None, "decode_head": None}
    if head.type in ("NLHead", "DNLHead"):
        assert head.use_scale and head.mode == "embedded_gaussian"
        if head.type == "NLHead":
            return {**width, **context_head("NonLocal2d", reduction=head.reduction)}
        # mmseg's DNLHead temperature: its default unless the config sets one
        dnl = {"reduction": head.reduction, "temperature": head.get("temperature", 0.05), "unary": "conv"}
        return {**width, **context_head("DisentangledNonLocal2d", **dnl)}
    if head.type == "GCHead":
        assert head.pooling_type == "att" and tuple(head.fusion_types) == ("channel_add",)
        return {**width, **context_head("GlobalContext2d", reduction=round(1 / head.ratio))}
    if head.type == "CCHead":  # mmcv's CrissCrossAttention: query and key C // 8
        return {**width, **context_head("CrissCrossAttention2d", reduction=8, recurrence=head.recurrence)}
    if head.type == "DAHead":  # its three losses (pam_cam, pam, cam) all use loss_decode
        side = head.loss_decode.loss_weight
        return {**width, **own_head("DAHead", pam_reduction=head.channels // head.pam_channels, side_loss_weight=side)}
    if head.type == "ANNHead":
        assert tuple(head.query_scales) == (1,)
        pyramid = {"reduction": head.channels // head.project_channels, "pool_scales": list(head.key_pool_scales)}
        return {**width, **own_head("ANNHead", **pyramid)}
    if head.type == "ISAHead":
        isa = {"reduction": head.channels // head.isa_channels, "group_size": list(head.down_factor)}
        return {**width, **own_head("ISAHead", **isa)}
    if head.type == "EMAHead":  # the EM attention's width is ours head_channels; mmseg's channels come after it
        ema = {"out_channels": head.channels, "num_bases": head.num_bases, "num_stages": head.num_stages}
        ema.update(momentum=head.momentum, concat_input=head.get("concat_input", True))
        return {"head_channels": head.ema_channels, **own_head("EMAHead", **ema)}
    if head.type == "OCRHead":
        return {
            **width,
            **own_head("OCRHead", reduction=head.channels // head.ocr_channels, scale=head.get("scale", 1)),
        }
    raise AssertionError(f"no recipe settings known for mmseg's {head.type}")


@pytest.mark.parametrize("config", MMSEG_RECIPES, ids=recipe_id)
def test_recipe_has_the_settings_of_the_mmseg_config_it_mirrors(config):
    """Everything the mmseg config sets that the recipe can say, read from mmseg's own config file."""
    from mmseg_reference import load_config

    mm = load_config(mirrored_config(config))
    ours = resolved(config)
    model, data, trainer = ours["model"], ours["data"]["init_args"], ours["trainer"]
    network, loss, optimization = model["network"], model["loss"], model["optimization"]
    backbone = mm.model.backbone
    if isinstance(mm.model.decode_head, list):  # OCR's CascadeEncoderDecoder: the FCN stage is our aux head
        assert mm.model.type == "CascadeEncoderDecoder" and "auxiliary_head" not in mm.model
        aux, head = mm.model.decode_head
    else:
        head, aux = mm.model.decode_head, mm.model.auxiliary_head
    # Encoder: ResNetV1c-50/101 at output stride 8 with contracted dilation = timm's resnet*c (tested for weights
    # and features in tests/checkpoints/test_mmseg.py)
    assert (backbone.type, backbone.strides, backbone.dilations) == ("ResNetV1c", (1, 2, 1, 1), (1, 1, 2, 4))
    assert backbone.contract_dilation and network["encoder"]["name"] == f"tu-resnet{backbone.depth}c"
    assert network["encoder"]["output_stride"] == 8
    # Heads: the decode head's own settings, then the aux head (OCR: its cascade's first stage)
    expected = mirrored_head(head)
    assert contains(network, expected), (network["context"], network["decode_head"], expected)
    assert head.in_index == ([2, 3] if head.type == "ANNHead" else 3)  # ANN: stages 3 and 4; the others: stage 4
    assert network["aux_channels"] == aux.channels
    assert (aux.num_convs, aux.concat_input, aux.in_index) == (1, False, 2)
    assert network["dropout"] == head.dropout_ratio == aux.dropout_ratio
    assert network["align_corners"] == head.align_corners == aux.align_corners
    datamodule = next(cls for cls, num_classes, *_ in FAMILIES.values() if num_classes == head.num_classes)
    assert ours["data"]["class_path"] == f"dnlseg.data.{datamodule.__name__}"
    # Loss: plain CE averaged over all pixels (avg_non_ignore False), aux weight 0.4
    for decode_loss in (head.loss_decode, aux.loss_decode):
        assert decode_loss.type == "CrossEntropyLoss" and not decode_loss.get("avg_non_ignore", False)
    assert loss["normalization"] == "all" and loss["ohem_threshold"] is None and "sampler" not in head
    assert loss["aux_weight"] == aux.loss_decode.loss_weight and head.loss_decode.loss_weight == 1.0
    # Optimiser and schedule; paramwise keys mmengine acts on (lr_mult / decay_mult; not the DNL config's wd_mult)
    optimizer = mm.optim_wrapper.optimizer
    assert model["optimizer"]["class_path"] == f"torch.optim.{optimizer.type}"
    sgd = {k: optimizer[k] for k in ("lr", "momentum", "weight_decay")}
    assert {k: model["optimizer"]["init_args"][k] for k in sgd} == sgd  # the rest: torch.optim.SGD's defaults
    assert not model["optimizer"]["init_args"]["nesterov"] and model["optimizer"]["init_args"]["dampening"] == 0
    custom = mm.optim_wrapper.get("paramwise_cfg", {}).get("custom_keys", {})
    assert optimization["param_groups"] is None and not any({"lr_mult", "decay_mult"} & set(v) for v in custom.values())
    (poly,) = mm.param_scheduler
    assert poly.type == "PolyLR" and not poly.by_epoch and poly.begin == 0
    if poly.end == mm.train_cfg.max_iters:  # the default poly: over the whole run
        assert (optimization["poly_eta_min"], optimization["poly_power"], model["lr_scheduler"]) == (
            poly.eta_min,
            poly.power,
            None,
        )
    else:  # a poly that ends before the run (OCR R101: at 40000 of 80000), then stays at its floor
        args = {"total_iters": mmseg_total_iters(poly.end), "power": poly.power, "eta_min": poly.eta_min}
        assert model["lr_scheduler"]["class_path"] == "dnlseg.models.schedule.PolyLR"
        assert contains(model["lr_scheduler"]["init_args"], args)
    assert trainer["max_steps"] == mm.train_cfg.max_iters and trainer["val_check_interval"] == mm.train_cfg.val_interval
    # Data: the splits (VOC: the lists, train + aug concatenated), crop, batch 4 GPUs x per-GPU batch, normalisation
    if datamodule is VOCDataModule:
        train = mm.train_dataloader.dataset
        parts = train.datasets if train.type == "ConcatDataset" else [train]
        assert data["train_split"] == "+".join(Path(part.ann_file).stem for part in parts)
        assert [part.data_prefix.seg_map_path for part in parts] == ["SegmentationClass", "SegmentationClassAug"]
        assert Path(mm.val_dataloader.dataset.ann_file).stem == data["val_split"]
    assert tuple(data["augmentation"]["crop_size"]) == tuple(mm.crop_size)
    gpus_x_batch = GPUS_X_BATCH.search(mirrored_config(config))
    assert (trainer["devices"], data["loader"]["batch_size"]) == (int(gpus_x_batch["gpus"]), int(gpus_x_batch["batch"]))
    assert data["loader"]["batch_size"] == mm.train_dataloader.batch_size
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


@pytest.mark.slow
@pytest.mark.parametrize("config", [p for p in RECIPES if p.parent.name == "synthetic"], ids=recipe_id)
def test_synthetic_recipe_trains_one_step_with_its_head(config, tmp_path):
    keys = own_keys(config)
    own_head = keys.get("model.network.decode_head")  # a head of its own layout, or a block in the context head
    own = with_files_loaded(keys.get("model.network.context"), config.parent)  # a block named by path
    cli = run_cli(
        [
            "-c",
            str(config),
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.network.head_channels=16",
            "--model.network.aux_channels=8",
            "--data.init_args.num_train=2",
            "--data.init_args.num_val=1",
            "--data.init_args.image_size=32",
            "--data.init_args.loader.batch_size=2",
        ],
        run=False,
    )

    def path_of(module: nn.Module) -> str:
        return f"{type(module).__module__.rsplit('.', 1)[0]}.{type(module).__name__}"

    if own_head is not None:
        assert own is None and path_of(cli.model.network.decode_head) == own_head["class_path"]
    elif own is None:  # the baseline
        block = cli.model.network.decode_head.context
        assert isinstance(block, nn.Identity)
    else:
        assert path_of(cli.model.network.decode_head.context) == own["class_path"]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1 and torch.isfinite(cli.trainer.callback_metrics["train/loss"])
