"""Where each command writes: a fit's run folder, and the evaluation folder of a checkpoint.

**Run folders** (``fit``). Lightning's ``TensorBoardLogger`` picks the next free version itself, but only when it
is built, and its ``ckpt_path="last"`` then looks in that *new* folder -- a resumed run would never find its
checkpoint. A fixed version has the opposite problem: a second run overwrites the first one's checkpoints and
mixes its events into the same folder. So the version is decided here, from the folders on disk, before
anything is built:

- ``--ckpt_path last``: the latest ``<save_dir>/<name>/version_<n>`` that holds ``checkpoints/last.ckpt``;
- otherwise: one past the highest existing version (``version_0`` in an empty folder).

A version given in the config (a run's saved ``config.yaml`` holds its own) is kept, but a fit may write into a
folder that already holds checkpoints only to continue that run (``--ckpt_path last``, or a checkpoint of that
folder): anything else would overwrite the run's ``last.ckpt``.

**Evaluation folders** (``validate``, ``test``, ``predict``, ``analyze``). They never write into a run's own
files. Everything one evaluation writes (its resolved ``config.yaml``, TensorBoard events, ``metrics.json``,
``predictions/``, figures) goes to a new folder tied to the checkpoint it evaluated::

    <run>/checkpoints/<name>.ckpt   ->  <run>/eval/<name>/<subcommand>-<n>/
    <folder>/<name>.<ext>           ->  <folder>/eval/<name>/<subcommand>-<n>/   (a checkpoint outside a run)
    no checkpoint                   ->  <save_dir>/<logger name>/eval/untrained/<subcommand>-<n>/

with ``<n>`` the next free number; ``--output_dir DIR`` replaces the whole path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from dnlseg.preflight import ConfigError

log = logging.getLogger(__name__)

VERSION_DIR = re.compile(r"version_(\d+)")
EVAL_DIR = "eval"
UNTRAINED = "untrained"  # the evaluation folder name of a run without a checkpoint
# Set by the process that chose the output folder, for the DDP worker processes Lightning starts from the same
# command line: they use that folder instead of choosing again (by then the first one may exist).
FOLDER_ENV = "DNLSEG_OUTPUT_FOLDER"
# What a command writes before it has a result; a folder holding only these is removed when the command fails.
BOOKKEEPING_FILES = ("config.yaml", "hparams.yaml")
EVENTS_PREFIX = "events.out.tfevents"


def existing_versions(run_root: Path) -> list[int]:
    """The ``n`` of every ``version_<n>`` folder under ``run_root``, ascending."""
    if not run_root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in run_root.iterdir() if p.is_dir() and (m := VERSION_DIR.fullmatch(p.name)))


def latest_with_last(run_root: Path) -> int | None:
    """The highest ``n`` of a ``version_<n>`` under ``run_root`` that holds ``checkpoints/last.ckpt``, or None."""
    for version in reversed(existing_versions(run_root)):
        if (run_root / f"version_{version}" / "checkpoints" / "last.ckpt").is_file():
            return version
    return None


def choose_version(run_root: Path, resume_last: bool) -> int:
    """The version a fit should use under ``run_root`` (= ``<save_dir>/<name>``)."""
    if resume_last:
        latest = latest_with_last(run_root)
        if latest is not None:
            return latest
        log.warning("--ckpt_path last: no checkpoints/last.ckpt under %s; starting a new run", run_root)
    versions = existing_versions(run_root)
    return versions[-1] + 1 if versions else 0


def logger_args(config: Any) -> Any | None:
    """``trainer.logger.init_args`` of a parsed config when the logger writes under a ``save_dir``, else None."""
    init_args = getattr(getattr(config.trainer, "logger", None), "init_args", None)
    if init_args is None or getattr(init_args, "save_dir", None) is None:
        return None
    return init_args


def logger_root(config: Any) -> Path | None:
    """``<save_dir>/<name>`` of the config's logger (None without one)."""
    init_args = logger_args(config)
    if init_args is None:
        return None
    name = getattr(init_args, "name", None)
    return Path(init_args.save_dir) / name if name else Path(init_args.save_dir)


def is_inside(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def check_resumes_its_own_run(run_dir: Path, ckpt_path: str | None) -> None:
    """Raise ``ConfigError`` if a fit into ``run_dir``, which holds checkpoints, would not continue that run."""
    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir() or not any(checkpoints.glob("*.ckpt")):
        return
    if ckpt_path == "last" or (ckpt_path is not None and Path(ckpt_path).is_file() and is_inside(ckpt_path, run_dir)):
        return
    raise ConfigError(
        f"trainer.logger.init_args.version: {run_dir} already holds a run (its checkpoints/); a new fit there "
        "would overwrite them. Continue that run with --ckpt_path last, or start a new one in the next free "
        "folder with --trainer.logger.init_args.version=null"
    )


def resolve_logger_version(fit_config: Any) -> Path | None:
    """Set ``trainer.logger.init_args.version`` of a parsed ``fit`` config when it is not given; return the run folder.

    None when the logger writes no run folder (no logger, or one without ``save_dir``).
    """
    init_args = logger_args(fit_config)
    if init_args is None:
        return None
    run_root = logger_root(fit_config)
    inherited = os.environ.get(FOLDER_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
    if inherited is not None and Path(inherited).parent == run_root:
        init_args.version = int(VERSION_DIR.fullmatch(Path(inherited).name).group(1))
    elif getattr(init_args, "version", None) is None:
        init_args.version = choose_version(run_root, resume_last=fit_config.ckpt_path == "last")
    version = init_args.version
    run_dir = run_root / (version if isinstance(version, str) else f"version_{version}")
    check_resumes_its_own_run(run_dir, fit_config.ckpt_path)
    os.environ[FOLDER_ENV] = str(run_dir)
    log.info("run folder: %s", run_dir)
    return run_dir


def evaluation_base(ckpt_path: Path) -> Path:
    """``<run>/eval/<name>`` for ``<run>/checkpoints/<name>.ckpt``; ``<folder>/eval/<name>`` for any other file."""
    folder = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    return folder / EVAL_DIR / ckpt_path.stem


def next_free(base: Path, prefix: str) -> Path:
    """``<base>/<prefix>-<n>`` with ``n`` one past the highest existing one (0 in an empty folder)."""
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)")
    taken = [int(m.group(1)) for p in base.iterdir() if (m := pattern.fullmatch(p.name))] if base.is_dir() else []
    return base / f"{prefix}-{max(taken) + 1 if taken else 0}"


def evaluation_dir(subcommand: str, ckpt_path: str | None, output_dir: str | None, untrained_root: Path) -> Path:
    """The folder an evaluation writes into (module docstring); ``untrained_root`` is used without a checkpoint."""
    if output_dir is not None:
        return Path(output_dir).expanduser()
    inherited = os.environ.get(FOLDER_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
    if inherited is not None and Path(inherited).name.startswith(f"{subcommand}-"):
        return Path(inherited)
    base = evaluation_base(Path(ckpt_path)) if ckpt_path is not None else untrained_root / EVAL_DIR / UNTRAINED
    return next_free(base, subcommand)


def redirect_outputs(config: Any, folder: Path) -> None:
    """Point a parsed evaluation config's logger and ``default_root_dir`` at ``folder`` (its log_dir is ``folder``)."""
    init_args = logger_args(config)
    if init_args is not None:
        init_args.save_dir, init_args.name, init_args.version = str(folder), "", ""
    config.trainer.default_root_dir = str(folder)
    os.environ[FOLDER_ENV] = str(folder)


def holds_results(folder: Path) -> bool:
    """True when ``folder`` holds anything besides what a command writes before its first result."""
    return any(
        p.is_file() and p.name not in BOOKKEEPING_FILES and not p.name.startswith(EVENTS_PREFIX)
        for p in folder.rglob("*")
    )


def remove_unfinished(folder: Path, created_root: Path | None = None) -> bool:
    """Remove ``folder`` (made by a command that failed) if it holds no result; True if it was removed.

    ``created_root``: the outermost folder the command created for it (``folder`` or an ancestor), removed
    too as far as it is empty then.
    """
    if not folder.is_dir() or holds_results(folder):
        return False
    shutil.rmtree(folder)
    log.info("removed %s: the command failed before it wrote anything", folder)
    parent = folder.parent
    while created_root is not None and parent.is_relative_to(created_root) and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


def write_metrics(folder: Path, record: dict[str, Any], figures: list[Path] = ()) -> Path:
    """``<folder>/metrics.json`` (``record`` with NaN as null) and ``metrics.md`` (a table, then the figures)."""
    metrics = {k: float(v) for k, v in sorted(record["metrics"].items())}
    finite = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}  # NaN: a class never seen -> null
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps({**record, "metrics": finite}, indent=2, allow_nan=False) + "\n")
    lines = [f"# {record.get('subcommand', 'evaluation')} of `{record.get('ckpt_path')}`", ""]
    source = f" ({record['step_source']})" if record.get("step_source") else ""
    lines += [f"Config: `{record.get('config')}`, checkpoint step: {record.get('step')}{source}", ""]
    lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in metrics.items()]]
    lines += ["", *[f"![{p.name}]({p.name})" for p in figures], ""]
    (folder / "metrics.md").write_text("\n".join(lines))
    return path
