"""Faults a test injects into a ``dnlseg`` subprocess through its config (importable from the repository root)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import lightning as L
import torch

from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from dnlseg.data import SyntheticDataModule


class StallingCheckpointIO(AtomicCheckpointIO):
    """Writes half of the checkpoint of step >= ``stall_at_step``, touches ``marker`` and sleeps (to be killed).

    Args:
        stall_at_step: the first global step whose save stalls.
        marker: file created once the half-written temporary file is on disk.
    """

    def __init__(self, stall_at_step: int, marker: str) -> None:
        super().__init__()
        self.stall_at_step = stall_at_step
        self.marker = marker
        self.step = -1

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.step = checkpoint.get("global_step", -1)
        super().save_checkpoint(checkpoint, path, storage_options)

    def write(self, f, data: memoryview) -> None:
        if self.step < self.stall_at_step:
            f.write(data)
            return
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        Path(self.marker).touch()
        time.sleep(600)


class FullDiskCheckpointIO(AtomicCheckpointIO):
    """Every checkpoint write fails as on a full disk: ``OSError(ENOSPC)`` from the write, without a file name."""

    def write(self, f, data: memoryview) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class NaNSyntheticDataModule(SyntheticDataModule):
    """The synthetic data with NaN images at training batches ``nan_batches`` (counted over the whole fit).

    Args:
        nan_batches: indices of the training batches (0-based, in the order the fit draws them) made NaN.
        **kwargs: ``SyntheticDataModule`` arguments.
    """

    def __init__(self, nan_batches: list[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_batches = set(nan_batches)
        self.drawn = 0

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self.trainer is not None and self.trainer.training:
            if self.drawn in self.nan_batches:
                batch["image"] = torch.full_like(batch["image"], float("nan"))
            self.drawn += 1
        return batch


class SlowSteps(L.Callback):
    """Sleeps after every training step, so that a test's signal lands mid-run on any machine.

    Args:
        seconds: the pause.
    """

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        time.sleep(self.seconds)


class MarkStep(L.Callback):
    """Creates ``marker`` once training step ``step`` is done, so a test can signal the process at that point.

    Args:
        step: the global step after which the marker appears.
        marker: the file to create.
    """

    def __init__(self, step: int, marker: str) -> None:
        self.step = step
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step:
            Path(self.marker).touch()


class MarkValidation(L.Callback):
    """Creates ``marker`` after the first batch of the first validation of training and sleeps ``seconds`` there,
    so that a test's signal lands in the middle of that validation.

    Args:
        marker: the file to create.
        seconds: the pause after that batch.
    """

    def __init__(self, marker: str, seconds: float = 2.0) -> None:
        self.marker = marker
        self.seconds = seconds

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if not trainer.sanity_checking and not Path(self.marker).exists():
            Path(self.marker).touch()
            time.sleep(self.seconds)


class StallBeforeTraining(L.Callback):
    """Creates ``marker`` when the fit starts (model built, checkpoint not yet restored) and sleeps ``seconds``.

    Args:
        marker: the file to create.
        seconds: the pause.
    """

    def __init__(self, marker: str, seconds: float = 3.0) -> None:
        self.marker = marker
        self.seconds = seconds

    def on_fit_start(self, trainer, pl_module) -> None:
        Path(self.marker).touch()
        time.sleep(self.seconds)


class FailBeforeTraining(L.Callback):
    """Raises in ``on_train_start``: after the fit wrote its config, events and hparams and restored its checkpoint,
    before its first step."""

    def on_train_start(self, trainer, pl_module) -> None:
        raise RuntimeError("injected failure before the first training step")
