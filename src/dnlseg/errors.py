"""Every error class of dnlseg, and the one base class of the errors a user can fix (``UserError``): a bad config
value, command line, weight or checkpoint file, dataset layout, a diverged loss, a model that cannot be exported.

Every exception dnlseg raises for a user's mistake derives from ``UserError`` (and from the builtin it is
closest to, e.g. ``ValueError``), and its message says what was wrong, where (the file or config key) and what
was expected. The ``dnlseg`` command reports a ``UserError`` as one line, ``dnlseg: <message>``, and exits
non-zero; anything else is a bug and keeps its traceback.

``machine_failure`` names the failures that are the machine's, not dnlseg's, however deep they are raised: a full
or read-only filesystem, a missing permission, out of memory (CPU or GPU), and Lightning's refusal of a trainer
setting; the command reports them in one line too. Imports nothing heavy (the command calls it).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

DEBUG_ENV = "DNLSEG_DEBUG"  # "1" (``dnlseg --debug``): errors with their traceback, the parser's with its usage


def debug_mode() -> bool:
    """Whether errors are to be shown whole (``dnlseg --debug`` or ``DNLSEG_DEBUG=1``) instead of in one line."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


class UserError(Exception):
    """A failure caused by the user's input (config, files, checkpoint); the message names it and the fix."""


def yaml_problem(error: Exception) -> str:
    """A YAML parser's error in one line: what it expected and where (``at line L, column C``), without the
    multi-line excerpt PyYAML's message carries."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    context = getattr(error, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{context + ': ' if context else ''}{problem}{where}"


class UsageError(UserError, ValueError):
    """A command line the parser refuses: an unknown subcommand, option or key, a value of the wrong type, a config
    file that is missing, empty or not YAML. Exit status 2, as for every argparse usage error."""

    exit_status = 2


class ModuleInterfaceError(UserError, TypeError):
    """A callback of the config needs a member the LightningModule lacks (``dnlseg.callbacks.module_interface``)."""


# What a user's mistake is about: config, files, data, training, export. Each says what, where and the fix.


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message starts with its key, e.g. ``model.output_stride``."""


class RenamedKeyError(UserError, ValueError):
    """A config gives an option under its old and its new name."""


class WeightFileError(UserError, ValueError):
    """A weight or checkpoint file that cannot be read, or that does not hold what it should."""


class WeightFileNotFoundError(UserError, FileNotFoundError):
    """A weight or checkpoint file that does not exist."""


class ChecksumMismatchError(WeightFileError):
    """A weight or checkpoint file whose bytes no longer match the checksums it was saved with."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint's parameters do not have the shapes of the model built from the config."""


class DatasetLayoutError(UserError, ValueError):
    """The files on disk are not the dataset's expected layout or content."""


class CorruptFileError(UserError, RuntimeError):
    """An image or label file could not be decoded."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss is NaN or infinite (the message names the step and every loss term)."""


class ExportError(UserError, ValueError):
    """A model, option or file that ``dnlseg export`` cannot turn into a deployable graph; the message says why."""


FILESYSTEM_ERRNOS = ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG")
OUTPUT_OPTIONS = {  # where a subcommand's outputs go, to write them elsewhere
    "fit": "--trainer.logger.init_args.save_dir=DIR",
    "convert": "--output FILE",
}
OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "out of memory", "CUDA error: out of memory")


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its cause or context, and so on (each once)."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def machine_failure(error: BaseException, subcommand: str | None = None) -> str | None:
    """The one-line message for a failure of the machine or a setting Lightning refuses, anywhere in ``error``'s
    chain (module docstring), or None for anything else. ``subcommand``: what was running (the advice differs)."""
    for cause in chain(error):
        if (
            isinstance(cause, OSError)
            and cause.errno is not None
            and errno.errorcode.get(cause.errno) in FILESYSTEM_ERRNOS
        ):
            return filesystem_failure(cause, subcommand)
        if (
            isinstance(cause, MemoryError)
            or type(cause).__name__ == "OutOfMemoryError"
            or (isinstance(cause, RuntimeError) and any(text in str(cause) for text in OUT_OF_MEMORY))
        ):
            return out_of_memory(cause, subcommand)
        if isinstance(cause, RuntimeError) and "is killed by signal: Killed" in str(cause):
            return (
                f"{first_sentence(cause)}: the system stopped a DataLoader worker, most often for lack of memory; "
                "use fewer --data.init_args.loader.num_workers or a smaller --data.init_args.loader.batch_size"
            )
        if type(cause).__name__ == "MisconfigurationException":  # Lightning refuses a setting, e.g. max_steps=-5
            return f"trainer: {' '.join(str(cause).split())}"
    return None


def filesystem_failure(error: OSError, subcommand: str | None) -> str:
    """``<path>: <what> (ENOSPC); <what to do>``; ``error`` has an ``errno``."""
    assert error.errno is not None
    name = errno.errorcode[error.errno]
    path = error.filename or "a file dnlseg was writing"
    elsewhere = OUTPUT_OPTIONS.get(subcommand or "", "--output_dir=DIR")
    intact = "; the files written before are intact" + (
        " (last.ckpt included: a checkpoint is replaced only once its new version is complete)"
        if subcommand == "fit"
        else ""
    )
    advice = {
        "ENOSPC": f"free space on that filesystem, or write elsewhere ({elsewhere}){intact}",
        "EDQUOT": f"free space within your quota, or write elsewhere ({elsewhere}){intact}",
        "EFBIG": f"write to a filesystem that takes larger files ({elsewhere}){intact}",
        "EROFS": f"write elsewhere ({elsewhere})",
    }.get(name, f"check the permissions of that path, or write elsewhere ({elsewhere})")
    return f"{path}: {os.strerror(error.errno).lower()} ({name}); {advice}"


def out_of_memory(error: BaseException, subcommand: str | None) -> str:
    """``out of memory on the GPU (tried to allocate 20.00 MiB) in fit: <what to reduce>``."""
    gpu = "CUDA" in str(error) or "MPS" in str(error) or "GPU" in str(error)
    amount = re.search(r"[Tt]ried to allocate ([\d.]+ ?\w+)", str(error))
    size = amount.group(1) if amount else None
    if size is not None and size.endswith(" bytes"):  # the CPU allocator counts bytes
        size = f"{int(size.split()[0]) / 2**30:.1f} GiB"
    what = f" (tried to allocate {size})" if size else ""
    if subcommand == "fit":
        advice = (
            "use a smaller --data.init_args.loader.batch_size or crop (--data.init_args.augmentation.crop_size; "
            "synthetic data: --data.init_args.image_size)"
        )
    else:
        advice = (
            "evaluate in sliding windows (--model.inference.mode=slide), with fewer --model.inference.scales, "
            "--model.inference.flip=false, or --data.init_args.loader.batch_size=1"
        )
    where = f" in {subcommand}" if subcommand else ""
    return f"out of memory on the {'GPU' if gpu else 'CPU'}{what}{where}: {advice}"


def first_sentence(error: BaseException) -> str:
    return " ".join(str(error).split()).split(". ")[0]
