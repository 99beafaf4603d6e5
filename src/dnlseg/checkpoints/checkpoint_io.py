"""Checkpoint files that are never half-written, and mmseg model-zoo files read as Lightning checkpoints.

``AtomicCheckpointIO`` (a Lightning ``CheckpointIO`` plugin, ``trainer.plugins`` in the configs) writes a
checkpoint to a temporary file in the checkpoint's own directory, fsyncs it, and renames it over the old
file (``os.replace``, atomic on POSIX within one filesystem), then fsyncs the directory. A process killed
at any moment leaves either the previous ``last.ckpt`` or the new one, both complete. Lightning's own
``_atomic_save`` stages the file in the system temp directory and moves it with ``shutil.move``, which
falls back to a non-atomic copy when that directory is on another filesystem (the usual case on clusters:
local ``/tmp``, shared checkpoint storage), and never fsyncs. A temporary file left by a killed write is
removed by the next successful save of the same checkpoint. Remote URLs (``s3://`` ...) are left to Lightning.

Every file it writes carries torch's CRC-32 of each record (turned on for the save whatever
``torch.serialization.set_crc32_options`` says) and is created with the user's umask, like every other file of a
run (``tempfile.mkstemp`` would make it 0600). Loading checks those CRCs first (``weight_files.verify_checksums``):
a damaged file is one line naming it instead of silently changed weights.
"""

from __future__ import annotations

import io
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dnlseg.checkpoints.mmseg import as_lightning_checkpoint, is_mmseg_checkpoint
from dnlseg.checkpoints.weight_files import unreadable, verify_checksums
from dnlseg.errors import WeightFileError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``<dir>/.<name>.<random>.tmp``, fsync, ``os.replace`` onto ``<dir>/<name>``, fsync dir."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        if "://" in str(path) and not str(path).startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with crc32_on():
            torch.save(checkpoint, buffer)
        fd, tmp = create_temporary(path)
        try:
            with os.fdopen(fd, "wb") as f:
                self.write(f, buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as error:  # a full disk, ...: named with the checkpoint's path (a write's error has none)
            Path(tmp).unlink(missing_ok=True)
            if error.filename is None and error.errno is not None:
                raise OSError(error.errno, error.strerror, str(path)) from error
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

    def write(self, f, data: memoryview) -> None:
        """Write the serialised checkpoint to the open temporary file (a seam for fault-injection tests)."""
        f.write(data)

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loading, plus mmsegmentation model-zoo files (``dnlseg.checkpoints.mmseg``): they come
        back as a Lightning checkpoint of their weights, which ``SegmentationModule.on_load_checkpoint`` maps.
        A file that is not a checkpoint, or whose bytes do not match its checksums, raises ``WeightFileError``
        naming it."""
        if "://" not in str(path) and Path(path).is_file():
            verify_checksums(path, f"--ckpt_path {path}")
        try:
            # torch.load takes "cpu"; Lightning annotates map_location as a callable only
            checkpoint = super().load_checkpoint(path, map_location or "cpu", weights_only)  # type: ignore[arg-type]
        except FileNotFoundError:
            raise
        except Exception as error:
            raise WeightFileError(unreadable(f"--ckpt_path {path}", error, "--weights_only=false")) from error
        if is_mmseg_checkpoint(checkpoint):
            return as_lightning_checkpoint(checkpoint, path)
        return checkpoint


@contextmanager
def crc32_on():
    """``torch.save`` with a CRC-32 of every record inside, whatever the process-wide option says."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def create_temporary(path: Path) -> tuple[int, str]:
    """(descriptor, name) of a new hidden file ``.<name>.<random>.tmp`` beside ``path``, created with the user's
    umask (mode 0666 & ~umask, as ``open`` creates every other file), never an existing one."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), str(tmp)
        except FileExistsError:
            continue


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
