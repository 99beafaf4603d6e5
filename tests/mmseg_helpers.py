"""Shared by the mmseg parity tests: a recipe's mirrored mmseg config, its models (mmseg's and ours) with the
same random weights, and mmseg-format checkpoint files as the model zoo writes them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dnlseg.cli.lightning_cli import run_cli
from tests.recipes import MIRRORS, recipe_cpu_args


def mirrored_config(recipe_file: Path) -> str:
    """The mmseg config a recipe names in its header, e.g. ``dnlnet/dnl_r50-d8_4xb2-80k_cityscapes-512x1024.py``."""
    match = MIRRORS.search(recipe_file.read_text())
    assert match, f"{recipe_file} names no mmseg config it mirrors"
    return match.group(1)


def recipe_model(recipe_file: Path, data_root: Path, save_dir: Path, *overrides: str):
    """The ``SegmentationModule`` a recipe builds (random weights, no encoder file)."""
    return run_cli([*recipe_cpu_args(recipe_file, data_root, save_dir), *overrides], run=False).model


def mmseg_model(recipe_file: Path, seed: int = 0) -> nn.Module:
    """mmseg's model of the config a recipe mirrors, every weight and BatchNorm statistic random, eval mode."""
    from mmseg_reference import build_segmentor, randomize

    return assert_randomised(randomize(build_segmentor(mirrored_config(recipe_file)), seed=seed).eval())


def assert_randomised(model: nn.Module) -> nn.Module:
    """``model``, checked to have no weight left constant: a gamma at 0 or a LayerNorm at 1 and 0 would hide its
    branch from every comparison."""
    constant = [name for name, p in model.named_parameters() if not p.any() or (p.numel() > 1 and not p.std())]
    assert not constant, f"left constant by the randomisation: {constant}"
    return model


def save_mmseg_checkpoint(model: nn.Module, path: Path, classes: list[str]) -> Path:
    """A file as mmseg's model zoo holds them (mmcv 1.x ``save_checkpoint``): meta, state_dict, optimizer."""
    meta = {
        "env_info": "sys.platform: linux\nPython: 3.7.7",
        "config": "model = dict(type='EncoderDecoder')\n",
        "seed": 0,
        "exp_name": "dnl_r50-d8_512x1024_80k_cityscapes.py",
        "mmcv_version": "1.1.1",
        "time": "Fri Sep  4 23:36:29 2020",
        "CLASSES": tuple(classes),
        "PALETTE": [[128, 64, 128]] * len(classes),
        "epoch": 1,
        "iter": 80000,
        "mmseg_version": "0.6.0+58b2f77",
    }
    params = list(range(len(list(model.parameters()))))
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4, "params": params}]}
    torch.save({"meta": meta, "state_dict": model.state_dict(), "optimizer": optimizer}, path)
    return path


def mmseg_zoo_state(config_name: str) -> dict:
    """The state dict mmseg builds for ``config_name``, as its zoo file holds it (random weights). PSANet's
    ``PSAMask`` is a compiled op that mmcv-lite lacks; it has no parameters or buffers (it adds no key), so a module
    without any stands in for it while mmseg builds the head."""
    from unittest import mock

    from mmseg_reference import build_segmentor, import_mmseg

    import_mmseg()
    from mmseg.models.decode_heads import psa_head

    class NoPSAMask(nn.Module):
        def __init__(self, psa_type: str, mask_size=None) -> None:
            super().__init__()

    with mock.patch.object(psa_head, "PSAMask", NoPSAMask):
        return build_segmentor(config_name).state_dict()
