"""The shipped recipes, found in configs/, resolved as ``dnlseg fit -c <recipe> --print_config`` shows them, and
how the tests run a 4-GPU recipe as one CPU process.

A recipe is a YAML file ``configs/<family>/<name>.yaml``; a file whose name starts with ``_`` is not a recipe but
the part that a family's recipes share (its recipes name it in their ``config:`` key). The tests list the recipes
from the folder: a new recipe file is tested without naming it anywhere.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_PREFIX = "_"
MIRRORS = re.compile(r"^# Mirrors mmsegmentation 1\.2\.2 configs/(\S+\.py)", re.M)
MMSEG_FAMILIES = ("cityscapes", "ade20k", "voc")  # the recipes that mirror an mmseg config (tests/test_configs.py)
# Recipes of those families with no mmseg config to mirror, and why (each still composes its family's shared file).
NOT_MIRRORED = {"voc/dnl_r50_d8_512x512_20k": "mmsegmentation 1.2.2 has no DNL config for Pascal VOC"}


def recipes(configs: Path = CONFIGS) -> list[Path]:
    """Every recipe under ``configs``: ``<family>/<name>.yaml`` whose name does not start with ``_``."""
    return sorted(p for p in configs.glob("*/*.yaml") if not p.name.startswith(SHARED_PREFIX))


def shared_files(configs: Path = CONFIGS) -> list[Path]:
    """The shared parts: ``<family>/_<name>.yaml``."""
    return sorted(configs.glob(f"*/{SHARED_PREFIX}*.yaml"))


def recipe_id(path: Path) -> str:
    """``configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml`` -> ``cityscapes/dnl_r50_d8_512x1024_80k`` (test ids)."""
    return f"{path.parent.name}/{path.stem}"


RECIPES = recipes()
MMSEG_RECIPES = [p for p in RECIPES if p.parent.name in MMSEG_FAMILIES and recipe_id(p) not in NOT_MIRRORED]


def recipe(name: str) -> Path:
    """``cityscapes/dnl_r50_d8_512x1024_80k`` -> its YAML file."""
    return CONFIGS / f"{name}.yaml"


@functools.cache
def _resolved(recipe_file: Path) -> str:
    from dnlseg.cli.lightning_cli import resolve_config

    return json.dumps(resolve_config(recipe_file))


def resolved(recipe_file: Path) -> dict:
    """The whole config of a recipe (``dnlseg.cli.lightning_cli.resolve_config``), a fresh copy callers may change."""
    return json.loads(_resolved(recipe_file))


def recipe_cpu_args(recipe_file: Path, data_root: Path, save_dir: Path) -> list[str]:
    """Run a 4-GPU recipe as one CPU process on a tiny fixture dataset."""
    return [
        "-c",
        str(recipe_file),
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.sync_batchnorm=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--data.init_args.root={data_root}",
        "--data.init_args.loader.num_workers=0",
    ]
