"""On SIGTERM (pre-emption, ``scancel``, ``kill``) or Ctrl-C (SIGINT), save ``last.ckpt`` before the process exits.

Lightning catches SIGTERM itself: it finishes the current training step (and the validation due after it, or
stops a validation in progress at its next batch), then raises ``SIGTERMException`` on every rank. This callback
saves the full training state at that point to the ``last`` file of the run's ``ModelCheckpoint``
(``<dirpath>/last.ckpt``), so ``--ckpt_path last`` resumes from the step the signal interrupted.

Ctrl-C takes the same path: during a fit, the first SIGINT sets Lightning's SIGTERM flag instead of raising
``KeyboardInterrupt`` (which Lightning would turn into "Detected KeyboardInterrupt", exit status 1 and nothing
saved). A second Ctrl-C raises ``KeyboardInterrupt`` at once: the fit stops without saving (``last.ckpt`` stays
at its last save). Under DDP each process receives the terminal's SIGINT; Lightning's broadcast of rank zero's
flag stops them together.

A signal before the fit's first training step ends the fit with nothing saved: nothing was trained (a new run's
folder is then removed by the ``dnlseg`` command, a resumed run's files are left as they were). Other exceptions
save nothing: a crash mid-step (out of memory, a non-finite loss, a corrupt file) leaves the last checkpoint
written in normal training as it was. The ``dnlseg`` command exits with status 128 + the signal's number
afterwards (143 for SIGTERM, 130 for SIGINT): ``exit_status``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)

SIGNAL_ATTRIBUTE = "dnlseg_signal"  # set on the SIGTERMException: the signal that stopped the fit


def last_checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The first ``ModelCheckpoint`` with a directory that keeps a last checkpoint, else the first one."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    return next((cb for cb in callbacks if cb.save_last), callbacks[0] if callbacks else None)


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """``<dirpath>/last.ckpt`` of ``last_checkpoint_callback``."""
    callback = last_checkpoint_callback(trainer)
    if callback is None or callback.dirpath is None:
        return None
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


def exit_status(error: BaseException) -> int:
    """128 + the signal that stopped a fit with ``error`` (Lightning's ``SIGTERMException``): 143 or 130."""
    return 128 + int(getattr(error, SIGNAL_ATTRIBUTE, signal.SIGTERM))


class CheckpointOnSigterm(L.Callback):
    """Saves ``<ModelCheckpoint dirpath>/last.ckpt`` when a fit stops on SIGTERM or Ctrl-C (module docstring)."""

    def __init__(self) -> None:
        self.sigint = False  # a Ctrl-C asked this fit to stop
        self.start_step: int | None = None  # the global step the fit's training started from
        self.trainer: L.Trainer | None = None
        self.previous_handler: Callable[[int, FrameType | None], Any] | int | None = None  # signal.getsignal's

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.sigint, self.start_step = False, None
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self.trainer, self.previous_handler = trainer, signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self.on_sigint)

    def on_sigint(self, signum: int, frame) -> None:
        """SIGINT handler during a fit: the first asks the fit to stop after its step, the next stops it now."""
        trainer = self.trainer
        if trainer is None or self.sigint:  # the fit is over, or the second Ctrl-C
            self.restore_sigint()
            raise KeyboardInterrupt
        self.sigint = True
        trainer._signal_connector.received_sigterm = True  # Lightning's flag: stop after this step
        rank_zero_info(
            "Ctrl-C: stopping after the current step to save last.ckpt (press Ctrl-C again to stop without saving)"
        )

    def restore_sigint(self) -> None:
        """Give SIGINT back to the handler it had before the fit (after it or on any exception)."""
        handler, self.trainer = self.previous_handler, None
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)
            self.previous_handler = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step
        if self.sigint:  # before Lightning reset its flag (it registers its own handlers after setup)
            raise SIGTERMException

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.restore_sigint()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore_sigint()
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        name = "SIGINT" if self.sigint else "SIGTERM"
        setattr(exception, SIGNAL_ATTRIBUTE, signal.SIGINT if self.sigint else signal.SIGTERM)
        if self.start_step is None or trainer.global_step == self.start_step:
            rank_zero_info(f"{name} before the first training step of this fit: nothing trained, nothing saved")
            return
        path = last_checkpoint_path(trainer)
        if path is None:
            log.warning("%s: no ModelCheckpoint with a directory; nothing saved", name)
            return
        # The file records itself as the callback's last checkpoint: a resumed run then keeps writing last.ckpt.
        callback = last_checkpoint_callback(trainer)  # the one last_checkpoint_path named
        if callback is not None:
            callback.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # every rank takes part; rank zero writes
        rank_zero_info(
            f"{name} at step {trainer.global_step}: saved {path}; resume with the same command and --ckpt_path last"
        )
