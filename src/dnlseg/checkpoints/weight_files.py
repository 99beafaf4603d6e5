"""Reading weight and checkpoint files, and the errors a file that does not fit raises, with the message that says why.

``read_torch_file`` loads a ``.pth``/``.ckpt``/``.safetensors`` file with ``weights_only`` (no code from the file
runs); ``check_state_dict_fits`` compares a state dict with a model and lists every parameter that differs.
Used by ``AtomicCheckpointIO`` (``dnlseg.checkpoints.checkpoint_io``), the encoder's ImageNet weights, mmseg
checkpoints and ``dnlseg convert``; a module of its own so that none of them imports another to get at a file.

``verify_checksums`` checks a file's contents before it is loaded. ``torch.save`` writes a zip archive with a CRC-32
of every record (the pickle, each tensor's bytes; ``torch.serialization.get_crc32_options()``, on by default), but
``torch.load`` never compares them: a file with bytes overwritten inside loads, its tensors silently changed.
Python's ``zipfile`` compares each record with its CRC-32 as it reads it, at about the speed of reading the file
(0.15 s for a 200 MB checkpoint on a 2-core Xeon, warm cache; ``torch.load`` of it: 0.2 s). Files without CRCs
cannot be checked and load as before: torch's legacy (pre-1.6, non-zip) format, safetensors, and zip files saved
with torch's crc32 option off (every CRC 0). dnlseg's own saves always carry them (``checkpoint_io``).
``--no_verify`` (``NO_VERIFY_ENV``) skips the check, for a damaged file that must be loaded anyway.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnlseg.errors import CheckpointMismatchError, ChecksumMismatchError, WeightFileError, WeightFileNotFoundError

NO_VERIFY_ENV = "DNLSEG_NO_VERIFY"  # "1": load files without checking their checksums (``dnlseg --no_verify``)
ZIP_MAGIC = b"PK\x03\x04"  # how a zip archive (torch.save's format since PyTorch 1.6) starts
CHUNK = 1 << 20
_verified: set[tuple[Any, ...]] = set()  # files checked in this process, by identity and modification time


def verification_off() -> bool:
    """Whether the user asked to load files unchecked (``dnlseg --no_verify``, which sets ``NO_VERIFY_ENV``)."""
    return os.environ.get(NO_VERIFY_ENV, "") not in ("", "0")


def verify_checksums(path: str | Path, what: str) -> bool:
    """Compare every record of the zip-format torch file ``path`` with the CRC-32 ``torch.save`` stored for it.

    Returns True when the file was checked (now or earlier in this process, unchanged since), False when it carries
    no checksums (module docstring) or checking is off. Raises ``ChecksumMismatchError``, one line naming ``what`` (the
    option, e.g. ``ckpt_path=...``) and the damaged record, for a file whose bytes changed after it was written.
    """
    path = Path(path)
    if verification_off():
        return False
    stat = path.stat()
    identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if identity in _verified:
        return True
    with open(path, "rb") as f:
        problem = damaged_record(f)
    if problem in ("not a zip archive", "no checksums"):
        return False  # legacy torch format, safetensors or not a weight file (the loader says which), CRCs off
    if problem is not None:
        raise ChecksumMismatchError(
            f"{what}: the file is damaged, {problem}: its bytes changed after it was saved (a disk, copy or transfer "
            "error); use an intact copy or another checkpoint, or load it anyway with dnlseg --no_verify"
        )
    _verified.add(identity)
    return True


def damaged_record(f) -> str | None:
    """What is wrong in the zip archive open in ``f``: None if every record matches its CRC-32, "not a zip
    archive", "no checksums" for an archive whose records all have CRC 0 (torch's crc32 option off), else which
    part is damaged."""
    head = f.read(len(ZIP_MAGIC))
    try:
        archive = zipfile.ZipFile(f)
    except Exception as error:  # BadZipFile, and what a damaged index makes zipfile raise (NotImplementedError, ...)
        if head != ZIP_MAGIC:
            return "not a zip archive"
        return f"its zip index cannot be read ({error}; truncated or overwritten)"
    with archive:
        records = archive.infolist()
        if all(info.CRC == 0 for info in records if info.file_size):
            return "no checksums"
        for info in records:
            try:
                with archive.open(info) as record:
                    while record.read(CHUNK):
                        pass
            except Exception as error:  # BadZipFile (CRC, header), zlib, struct, EOF: all "this record is damaged"
                reason = "its CRC-32 does not match" if "CRC" in str(error) else f"{type(error).__name__}: {error}"
                return f"record {info.filename} ({info.file_size} bytes at byte {info.header_offset}): {reason}"
    return None


def unreadable(what: str, error: Exception, trusted_option: str) -> str:
    """The message for a file ``torch.load`` failed on: why, and for a file with pickled objects how to trust it."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if isinstance(error, pickle.UnpicklingError) and found:
        return (
            f"{what} holds Python objects besides tensors ({found.group(1)}), which loading with weights_only "
            f"refuses; if you trust the file, {trusted_option}"
        )
    if isinstance(error, (pickle.UnpicklingError, KeyError)):  # torch's own text (e.g. "KeyError: 101") would confuse
        return f"{what} is not a file torch.load (or safetensors) can read (not a PyTorch pickle)"
    return f"{what} is not a file torch.load (or safetensors) can read ({type(error).__name__}: {error})"


def read_torch_file(path: Path, what: str) -> Any:
    """The object in ``path`` (``torch.load`` with ``weights_only``, or a ``.safetensors`` file), on the CPU.

    Raises ``WeightFileNotFoundError`` / ``WeightFileError`` naming ``what`` (the config key) and the file."""
    if not path.is_file():
        raise WeightFileNotFoundError(f"{what}: no file at {path}")
    verify_checksums(path, f"{what}: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, a text file, pickled objects, ...: all "not a weight file"
        raise WeightFileError(
            unreadable(f"{what}: {path}", error, "load it into a state dict and save that")
        ) from error


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


def check_resume_checkpoint(model: nn.Module, path: str | Path) -> int | None:
    """Before a fit resumes from the Lightning checkpoint ``path`` and writes anything: raise
    ``CheckpointMismatchError`` if its weights do not fit ``model``; return its global step.

    Read with ``mmap`` (no weights loaded). None, and nothing checked, for a file that is not a Lightning checkpoint
    read with ``weights_only`` (an mmseg model-zoo file, pickled objects): the fit's own loading reports those.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:
        return None
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        return None
    if isinstance(checkpoint.get("state_dict"), dict):
        check_state_dict_fits(model, checkpoint["state_dict"])
    step = checkpoint.get("global_step")
    return step if isinstance(step, int) else None
