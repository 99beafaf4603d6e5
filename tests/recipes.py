"""The paper-recipe configs, and how the tests run one of them (a 4-GPU recipe) as one CPU process."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(ROOT.glob("configs/cityscapes/*.yaml")) + sorted(ROOT.glob("configs/ade20k/*.yaml"))
MIRRORS = re.compile(r"^# Mirrors mmsegmentation 1\.2\.2 configs/(\S+\.py)", re.M)


def recipe(name: str) -> Path:
    """``cityscapes/dnl_r50_d8_512x1024_80k`` -> its YAML file."""
    return ROOT / "configs" / f"{name}.yaml"


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
        "--data.init_args.num_workers=0",
    ]
