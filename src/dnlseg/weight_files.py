"""Reading weight and checkpoint files, and the errors a file that does not fit raises, with the message that says why.

``read_torch_file`` loads a ``.pth``/``.ckpt``/``.safetensors`` file with ``weights_only`` (no code from the file
runs); ``check_state_dict_fits`` compares a state dict with a model and lists every parameter that differs.
Used by ``AtomicCheckpointIO`` (``dnlseg.checkpoint_io``), the encoder's ImageNet weights, mmseg checkpoints and
``dnlseg convert``; a module of its own so that none of them imports another to get at a file.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dnlseg.errors import UserError


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
