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

**Claiming the folder** (``claim_run_folder``). Two fits started at once would both see the same folders on disk
and choose the same new version. A new run's folder is therefore created with ``os.mkdir``, which only one process
can do: a process that finds the version taken tries the next one. Then the fit holds an exclusive ``flock`` on its
run folder until it ends, so that two fits resuming one run at once cannot both write it: the second stops with one
line before it writes anything. Only the process that was started by the user claims: the DDP worker processes
(``LOCAL_RANK`` > 0, ``RANK`` > 0 under torchrun, ``SLURM_PROCID`` > 0 under srun) take the folder they are given.
Where the file system has no ``flock`` (some network file systems) the lock is skipped with a warning; the
``mkdir`` claim still separates new runs.

**A failed fit leaves an existing run as it was** (``snapshot`` / ``restore``). A fit into an existing run folder
writes its ``config.yaml``, a new TensorBoard events file and ``hparams.yaml`` before it loads the checkpoint and
trains. When it fails before training a step (a refused checkpoint, a setup error, a signal), the folder is put
back as it was: files it added are removed, the small files it changed get their bytes back. A new run's folder
that holds no result is removed instead (``remove_unfinished``).

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
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dnlseg.errors import ConfigError

if sys.platform != "win32":  # Windows: no flock; the mkdir claim of new runs still holds
    import fcntl

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


def launching_process() -> bool:
    """Whether this process chooses and claims the output folder: not a DDP worker started beside rank zero (by
    Lightning: ``LOCAL_RANK``, torchrun: ``RANK``, srun: ``SLURM_PROCID``)."""
    return all(os.environ.get(name, "0") == "0" for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


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
    if run_root is None:
        return None
    inherited = os.environ.get(FOLDER_ENV) if os.environ.get("LOCAL_RANK", "0") != "0" else None
    numbered = VERSION_DIR.fullmatch(Path(inherited).name) if inherited is not None else None
    if inherited is not None and Path(inherited).parent == run_root and numbered is not None:
        init_args.version = int(numbered.group(1))
    elif getattr(init_args, "version", None) is None:
        init_args.version = choose_version(run_root, resume_last=fit_config.ckpt_path == "last")
    version = init_args.version
    run_dir = run_root / (version if isinstance(version, str) else f"version_{version}")
    check_resumes_its_own_run(run_dir, fit_config.ckpt_path)
    os.environ[FOLDER_ENV] = str(run_dir)
    log.log(logging.INFO if launching_process() else logging.DEBUG, "run folder: %s", run_dir)
    return run_dir


@dataclass
class RunFolder:
    """The run folder of a fit, claimed by this process (``claim_run_folder``).

    Attributes:
        path: the run folder.
        created: the outermost folder this process created for it (``path`` or an ancestor); None if it existed.
        lock: an open descriptor of ``path`` holding its ``flock`` (None: not locked); ``release`` closes it.
    """

    path: Path
    created: Path | None
    lock: int | None = None

    def release(self) -> None:
        if self.lock is not None:
            os.close(self.lock)
            self.lock = None


def make_folder(path: Path, exclusive: bool) -> Path | None:
    """Create ``path`` and its missing parents; return the outermost folder created, None if ``path`` existed.

    ``exclusive``: raise ``FileExistsError`` if ``path`` exists (another process created it first).
    """
    outermost = path
    while not outermost.parent.exists() and outermost.parent != outermost:
        outermost = outermost.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        if exclusive:
            raise
        return None
    return outermost


def lock_folder(path: Path) -> int | None:
    """An open descriptor of ``path`` that holds an exclusive ``flock`` on it (released when closed or at exit).

    Raises ``ConfigError`` when another process holds it; None where the file system cannot lock (a warning).
    """
    if sys.platform == "win32":
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"trainer.logger.init_args.version: {path} is being written by another dnlseg fit (it holds the run "
            "folder's lock); wait for that fit to end: two fits writing one run would mix its checkpoints and events"
        ) from None
    except OSError as error:
        os.close(fd)
        log.warning(
            "could not lock %s (%s): another fit resuming this run at the same time would not be stopped", path, error
        )
        return None
    return fd


def claim_run_folder(fit_config: Any) -> RunFolder | None:
    """Choose the run folder of a parsed ``fit`` config (``resolve_logger_version``), create it and lock it.

    A new run takes the first free ``version_<n>`` that this process can create itself (module docstring). None when
    the logger writes no run folder; a DDP worker process only resolves the folder (no creation, no lock).
    """
    init_args, run_root = logger_args(fit_config), logger_root(fit_config)
    if init_args is None or run_root is None:
        return None
    if not launching_process():
        worker_dir = resolve_logger_version(fit_config)
        return RunFolder(worker_dir, created=None) if worker_dir is not None else None
    resume = fit_config.ckpt_path == "last"
    if getattr(init_args, "version", None) is None and not (resume and latest_with_last(run_root) is not None):
        if resume:
            log.warning("--ckpt_path last: no checkpoints/last.ckpt under %s; starting a new run", run_root)
        version = choose_version(run_root, resume_last=False)
        while True:
            try:
                created = make_folder(run_root / f"version_{version}", exclusive=True)
                break
            except FileExistsError:  # another fit took it since it was chosen
                version += 1
        init_args.version = version
        run_dir = resolve_logger_version(fit_config)
    else:
        run_dir = resolve_logger_version(fit_config)
        created = make_folder(run_dir, exclusive=False) if run_dir is not None else None
    if run_dir is None:  # not reached: the logger has a save_dir (run_root)
        return None
    return RunFolder(run_dir, created, lock_folder(run_dir))


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


SMALL_FILE = 1 << 20  # files up to this size are kept whole by ``snapshot`` (config.yaml, hparams.yaml, ...)


@dataclass(frozen=True)
class FileState:
    """A file as ``snapshot`` found it: size, modification time, and the bytes of a small file."""

    size: int
    mtime_ns: int
    content: bytes | None


@dataclass(frozen=True)
class Snapshot:
    """The files and folders below a run folder (``eval/`` left out: evaluations write there on their own)."""

    files: dict[Path, FileState]
    folders: frozenset[Path]


def own_paths(folder: Path) -> list[Path]:
    """Every path below ``folder`` except the evaluation folders ``eval/``."""
    return [p for p in folder.rglob("*") if p.relative_to(folder).parts[0] != EVAL_DIR]


def snapshot(folder: Path) -> Snapshot:
    """What ``restore`` needs to put ``folder`` back as it is now (module docstring)."""
    files, folders = {}, set()
    for path in own_paths(folder):
        if path.is_dir():
            folders.add(path)
        elif path.is_file():
            stat = path.stat()
            content = path.read_bytes() if stat.st_size <= SMALL_FILE else None
            files[path] = FileState(stat.st_size, stat.st_mtime_ns, content)
    return Snapshot(files, frozenset(folders))


def restore(folder: Path, before: Snapshot) -> None:
    """Put ``folder`` back as ``before`` found it: files and folders added since are removed, changed or removed small
    files get their bytes (and times) back, a large file that grew (an events file) is cut back to its size."""
    removed = [p for p in own_paths(folder) if p.is_file() and p not in before.files]
    for path in removed:
        path.unlink()
    restored = []
    for path, state in before.files.items():
        now = path.stat() if path.is_file() else None
        if now is not None and (now.st_size, now.st_mtime_ns) == (state.size, state.mtime_ns):
            continue
        if state.content is not None:
            path.write_bytes(state.content)
        elif now is not None and now.st_size > state.size:
            os.truncate(path, state.size)
        else:
            log.warning("could not restore %s: it changed and is too large to have been kept", path)
            continue
        os.utime(path, ns=(state.mtime_ns, state.mtime_ns))
        restored.append(path)
    new_folders = sorted(
        (p for p in own_paths(folder) if p.is_dir() and p not in before.folders), key=lambda p: -len(p.parts)
    )
    for path in new_folders:
        if not any(path.iterdir()):
            path.rmdir()
    if removed or restored or new_folders:
        log.info(
            "%s is as it was before the failed fit (removed: %s; restored: %s)",
            folder,
            ", ".join(str(p.relative_to(folder)) for p in removed + new_folders) or "-",
            ", ".join(str(p.relative_to(folder)) for p in restored) or "-",
        )


def checkpoint_step(ckpt_path: str | None) -> int | None:
    """The ``global_step`` a Lightning checkpoint was saved at (None without a checkpoint, for an mmseg model-zoo
    file or any file that is not read this way: the record then says so, the command goes on)."""
    if ckpt_path is None:
        return None
    import torch

    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:
        return None
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return int(step) if step is not None else None


def write_metrics(folder: Path, record: dict[str, Any], figures: Sequence[Path] = ()) -> Path:
    """``<folder>/metrics.json`` (``record`` with NaN as null) and ``metrics.md`` (a table, then what was not computed
    and why (``record["not_computed"]``: [{block, analysis, reason}], ``dnlseg analyze``), then the figures)."""
    metrics = {k: float(v) for k, v in sorted(record["metrics"].items())}
    finite = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}  # NaN: a class never seen -> null
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps({**record, "metrics": finite}, indent=2, allow_nan=False) + "\n")
    lines = [f"# {record.get('subcommand', 'evaluation')} of `{record.get('ckpt_path')}`", ""]
    source = f" ({record['step_source']})" if record.get("step_source") else ""
    lines += [f"Config: `{record.get('config')}`, checkpoint step: {record.get('step')}{source}", ""]
    lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.4f} |" for k, v in metrics.items()]]
    if record.get("not_computed"):  # ``dnlseg analyze``: what has no number or figure, and why
        lines += ["", "Not computed (per context block and analysis):", "", "| block | analysis | why not |"]
        lines += [
            "|---|---|---|",
            *[f"| {r['block']} | {r['analysis']} | {r['reason']} |" for r in record["not_computed"]],
        ]
    lines += ["", *[f"![{p.name}]({p.name})" for p in figures], ""]
    (folder / "metrics.md").write_text("\n".join(lines))
    return path
