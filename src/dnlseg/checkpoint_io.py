"""Checkpoint files that are never half-written, and a readable error when a checkpoint does not fit the model.

``AtomicCheckpointIO`` (a Lightning ``CheckpointIO`` plugin, ``trainer.plugins`` in the configs) writes a
checkpoint to a temporary file in the checkpoint's own directory, fsyncs it, and renames it over the old
file (``os.replace``, atomic on POSIX within one filesystem), then fsyncs the directory. A process killed
at any moment leaves either the previous ``last.ckpt`` or the new one, both complete. Lightning's own
``_atomic_save`` stages the file in the system temp directory and moves it with ``shutil.move``, which
falls back to a non-atomic copy when that directory is on another filesystem (the usual case on clusters:
local ``/tmp``, shared checkpoint storage), and never fsyncs. A temporary file left by a killed write is
removed by the next successful save of the same checkpoint. Remote URLs (``s3://`` ...) are left to Lightning.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from dnlseg.errors import UserError


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
        torch.save(checkpoint, buffer)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                self.write(f, buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
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
        """Lightning's loading, plus mmsegmentation model-zoo files (``dnlseg.models.mmseg_checkpoint``): they come
        back as a Lightning checkpoint of their weights, which ``SegmentationModule.on_load_checkpoint`` maps.
        A file that is not a checkpoint raises ``WeightFileError`` naming it."""
        from dnlseg.models.mmseg_checkpoint import as_lightning_checkpoint, is_mmseg_checkpoint  # models import us

        try:
            checkpoint = super().load_checkpoint(path, map_location or "cpu", weights_only)
        except FileNotFoundError:
            raise
        except Exception as error:
            raise WeightFileError(unreadable(f"--ckpt_path {path}", error, "--weights_only=false")) from error
        if is_mmseg_checkpoint(checkpoint):
            return as_lightning_checkpoint(checkpoint, path)
        return checkpoint


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


class WeightFileError(UserError, ValueError):
    """A weight or checkpoint file that cannot be read, or that does not hold what it should."""


class WeightFileNotFoundError(UserError, FileNotFoundError):
    """A weight or checkpoint file that does not exist."""


def unreadable(what: str, error: Exception, trusted_option: str) -> str:
    """The message for a file ``torch.load`` failed on: why, and for a file with pickled objects how to trust it."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if isinstance(error, pickle.UnpicklingError) and found:
        return (
            f"{what} holds Python objects besides tensors ({found.group(1)}), which loading with weights_only "
            f"refuses; if you trust the file, {trusted_option}"
        )
    if isinstance(error, pickle.UnpicklingError):  # torch's weights_only text would only confuse here
        return f"{what} is not a file torch.load (or safetensors) can read (not a PyTorch pickle)"
    return f"{what} is not a file torch.load (or safetensors) can read ({type(error).__name__}: {error})"


def read_torch_file(path: Path, what: str) -> Any:
    """The object in ``path`` (``torch.load`` with ``weights_only``, or a ``.safetensors`` file), on the CPU.

    Raises ``WeightFileNotFoundError`` / ``WeightFileError`` naming ``what`` (the config key) and the file."""
    if not path.is_file():
        raise WeightFileNotFoundError(f"{what}: no file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, a text file, pickled objects, ...: all "not a weight file"
        raise WeightFileError(
            unreadable(f"{what}: {path}", error, "load it into a state dict and save that")
        ) from error


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint's parameters do not have the shapes of the model built from the config."""


def check_state_dict_fits(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise ``CheckpointMismatchError`` listing every parameter whose shape differs, is missing or is extra."""
    own = model.state_dict()
    differ = [
        f"  {name}: {source} {tuple(value.shape)} vs model {tuple(own[name].shape)}"
        for name, value in state_dict.items()
        if name in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[name].shape)
    ]
    missing = sorted(set(own) - set(state_dict))
    extra = sorted(set(state_dict) - set(own))
    if not (differ or missing or extra):
        return
    lines = [f"the {source} does not fit the model built from this config:"]
    if differ:
        lines += [f"{len(differ)} parameter shape(s) differ:", *differ]
    if missing:
        lines.append(f"{len(missing)} parameter(s) of the model are not in the {source}: {', '.join(missing[:10])}")
    if extra:
        lines.append(f"{len(extra)} parameter(s) of the {source} are not in the model: {', '.join(extra[:10])}")
    lines.append("resume with the config the checkpoint was trained with (the run's saved config.yaml)")
    raise CheckpointMismatchError("\n".join(lines))
