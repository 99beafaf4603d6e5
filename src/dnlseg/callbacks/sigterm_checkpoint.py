"""On SIGTERM (pre-emption, ``scancel``, ``kill``), save ``last.ckpt`` before the process exits.

Lightning catches SIGTERM itself: it finishes the current training step (and the validation due after it),
then raises ``SIGTERMException`` on every rank. This callback saves the full training state at that point to
the ``last`` file of the run's ``ModelCheckpoint`` (``<dirpath>/last.ckpt``), so ``--ckpt_path last``
resumes from the step the signal interrupted. Other exceptions save nothing: a crash mid-step (out of
memory, a non-finite loss, a corrupt file) leaves the last checkpoint written in normal training as it was.
The ``dnlseg`` command exits with status 143 (128 + SIGTERM) afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)


def last_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The first ``ModelCheckpoint`` with a directory that keeps a last checkpoint, else the first one."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    return next((cb for cb in callbacks if cb.save_last), callbacks[0] if callbacks else None)


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """``<dirpath>/last.ckpt`` of ``last_checkpoint_callback``."""
    callback = last_checkpoint_callback(trainer)
    if callback is None:
        return None
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


class CheckpointOnSigterm(L.Callback):
    """Saves ``<ModelCheckpoint dirpath>/last.ckpt`` when Lightning stops a fit on SIGTERM (module docstring)."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        path = last_checkpoint_path(trainer)
        if path is None:
            log.warning("SIGTERM: no ModelCheckpoint with a directory; nothing saved")
            return
        # The file records itself as the callback's last checkpoint: a resumed run then keeps writing last.ckpt.
        last_checkpoint_callback(trainer).last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank zero writes
        rank_zero_info(f"SIGTERM at step {trainer.global_step}: saved {path}; resume with --ckpt_path last")
