"""Where a fit writes: a new run gets the next free ``version_<n>``, ``--ckpt_path last`` resumes the latest.

Lightning's ``TensorBoardLogger`` picks the next free version itself, but only when it is built, and its
``ckpt_path="last"`` then looks in that *new* folder -- a resumed run would never find its checkpoint. A fixed
version has the opposite problem: a second run overwrites the first one's checkpoints and mixes its events
into the same folder. So the version is decided here, from the folders on disk, before anything is built:

- ``--ckpt_path last``: the latest ``<save_dir>/<name>/version_<n>`` that holds ``checkpoints/last.ckpt``;
- otherwise: one past the highest existing version (``version_0`` in an empty folder).

A version given in the config or on the command line is kept as it is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION_DIR = re.compile(r"version_(\d+)")


def existing_versions(run_root: Path) -> list[int]:
    """The ``n`` of every ``version_<n>`` folder under ``run_root``, ascending."""
    if not run_root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in run_root.iterdir() if p.is_dir() and (m := VERSION_DIR.fullmatch(p.name)))


def choose_version(run_root: Path, resume_last: bool) -> int:
    """The version a fit should use under ``run_root`` (= ``<save_dir>/<name>``)."""
    versions = existing_versions(run_root)
    if resume_last:
        for version in reversed(versions):
            if (run_root / f"version_{version}" / "checkpoints" / "last.ckpt").is_file():
                return version
        log.warning("--ckpt_path last: no checkpoints/last.ckpt under %s; starting a new run", run_root)
    return versions[-1] + 1 if versions else 0


def resolve_logger_version(fit_config: Any) -> None:
    """Set ``trainer.logger.init_args.version`` of a parsed ``fit`` config when it is not given."""
    logger = getattr(fit_config.trainer, "logger", None)
    init_args = getattr(logger, "init_args", None)
    if init_args is None or getattr(init_args, "version", None) is not None:
        return  # no logger, a logger given as an object, or an explicit version
    save_dir = getattr(init_args, "save_dir", None)
    if save_dir is None:
        return
    name = getattr(init_args, "name", None)
    run_root = Path(save_dir) / name if name else Path(save_dir)
    init_args.version = choose_version(run_root, resume_last=fit_config.ckpt_path == "last")
    log.info("run folder: %s", run_root / f"version_{init_args.version}")
