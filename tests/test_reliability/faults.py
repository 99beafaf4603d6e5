"""Faults a test injects into a ``dnlseg`` subprocess through its config (importable from the repository root)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import lightning as L
import torch

from dnlseg.checkpoint_io import AtomicCheckpointIO
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
