"""The shipped recipes, found in configs/, resolved as ``dnlseg fit -c <recipe> --print_config`` shows them, and
how the tests run a 4-GPU recipe as one CPU process.

A recipe is a YAML file ``configs/<family>/<name>.yaml``; a file whose name starts with ``_`` is not a recipe but
the part that a family's recipes share (its recipes name it in their ``config:`` key); a family file may in turn
compose ``configs/_base/`` (what every dataset family shares). A folder whose name starts with ``_``
(``configs/_callbacks/``, ``configs/_base/``) holds shared pieces named by path, never a recipe (configs/README.md).
The tests list the recipes from the folder: a new recipe file is tested without naming it anywhere.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# A 4-GPU recipe as one CPU process (no DDP, no SyncBatchNorm).
ONE_CPU_PROCESS = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.sync_batchnorm=false",
]
# ... and small: ResNet-18 (deep, stride 8), a 16-channel head, loading in the main process.
SMALL_ON_ONE_CPU = [
    *ONE_CPU_PROCESS,
    "--model.network.encoder.name=resnet18",
    "--model.network.head_channels=16",
    "--model.network.aux_channels=8",
    "--data.init_args.loader.num_workers=0",
]
SHARED_PREFIX = "_"
BASE = CONFIGS / "_base"  # what every dataset family composes (a family file's ``config:``)
MIRRORS = re.compile(r"^# Mirrors mmsegmentation 1\.2\.2 configs/(\S+\.py)", re.M)
MMSEG_FAMILIES = ("cityscapes", "ade20k", "voc")  # the recipes that mirror an mmseg config (tests/test_configs.py)
# Recipes of those families with no mmseg config to mirror, and why (each still composes its family's shared file).
NOT_MIRRORED = {"voc/dnl_r50_d8_512x512_20k": "mmsegmentation 1.2.2 has no DNL config for Pascal VOC"}


def recipes(configs: Path = CONFIGS) -> list[Path]:
    """Every recipe under ``configs``: ``<family>/<name>.yaml`` whose name and folder do not start with ``_``."""
    return sorted(
        p
        for p in configs.glob("*/*.yaml")
        if not p.name.startswith(SHARED_PREFIX) and not p.parent.name.startswith(SHARED_PREFIX)
    )


def shared_files(configs: Path = CONFIGS) -> list[Path]:
    """The shared parts of the families: ``<family>/_<name>.yaml``."""
    return sorted(p for p in configs.glob(f"*/{SHARED_PREFIX}*.yaml") if not p.parent.name.startswith(SHARED_PREFIX))


def config_files(configs: Path = CONFIGS) -> list[Path]:
    """Every YAML file under ``configs``: recipes, family files, shared callbacks, ablation settings."""
    return sorted(configs.rglob("*.yaml"))


_COMMENT = re.compile(r"(^|\s)#.*$")
_REFERENCE = re.compile(r"^([\w.]+: +)?[^\s{}\[\]:]+\.yaml$")  # `- ../_callbacks/x.yaml`, `config: _a.yaml`


def setting_runs(config_file: Path, skip_sections: tuple[str, ...] = ()) -> list[list[tuple[int, str]]]:
    """The runs of setting lines of a YAML file: (line number, the line without comment and indentation).

    Blank and comment lines are passed over. A line that names another config file (``config: _x.yaml``, a list
    item ``- ../_callbacks/x.yaml``) composes, it sets nothing: it ends a run, as does a top-level section named in
    ``skip_sections`` (``model`` or ``model.*`` keys), whose lines are left out.
    """
    runs, run, skipped = [], [], False
    for number, raw in enumerate(config_file.read_text().splitlines(), 1):
        if raw[:1].strip() and not raw.startswith("#"):  # a top-level key
            skipped = raw.split(":", 1)[0].split(".", 1)[0] in skip_sections
        line = _COMMENT.sub("", raw).strip().removeprefix("- ")  # a list item's first key: the same setting
        if not line:
            continue
        if skipped or _REFERENCE.match(line):
            runs, run = runs + [run], []
            continue
        run.append((number, line))
    return [r for r in runs + [run] if r]


def repeated_blocks(files: list[Path], lines: int = 6, skip_sections: tuple[str, ...] = ()) -> dict:
    """``lines`` consecutive setting lines (``setting_runs``) that stand in more than one file:
    {(file a, file b): [(line in a, line in b), ...]} for every pair of files sharing such a block."""
    where: dict[tuple[str, ...], list[tuple[Path, int]]] = {}
    for path in files:
        for run in setting_runs(path, skip_sections):
            for i in range(len(run) - lines + 1):
                where.setdefault(tuple(text for _, text in run[i : i + lines]), []).append((path, run[i][0]))
    pairs: dict[tuple[Path, Path], list[tuple[int, int]]] = {}
    for places in where.values():
        for a, (path_a, line_a) in enumerate(places):
            for path_b, line_b in places[a + 1 :]:
                if path_a != path_b:
                    pairs.setdefault((path_a, path_b), []).append((line_a, line_b))
    return pairs


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
        *ONE_CPU_PROCESS,
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--data.init_args.root={data_root}",
        "--data.init_args.loader.num_workers=0",
    ]
