"""Lightning's ``ModelCheckpoint``, whose last file is the fit's final state and whose record of its files is checked
against the disk when a run resumes.

**The final state.** Lightning's ``ModelCheckpoint(save_last=True, every_n_train_steps=n)`` writes ``last.ckpt`` at
multiples of ``n`` only, and the trainer validates at multiples of ``val_check_interval``: a fit of ``max_steps=120``
with ``n = 50`` and validation every 100 steps ends with ``last.ckpt`` of step 100 and its last ``val/mIoU`` at step
100, its last 20 steps lost. A ``ResumableModelCheckpoint`` that keeps a last file therefore

- stops the fit itself after its final batch (``trainer.should_stop``; the batch that reaches ``max_steps``, or the
  last batch of the last epoch): Lightning validates after a batch that stops the fit, so the final step is
  validated (once: a step that was due for validation anyway is not validated twice) and every checkpoint callback,
  the best-``val/mIoU`` one included, sees that validation;
- saves ``last.ckpt`` when the fit ends (``on_train_end``: max_steps, max_epochs, early stopping or any other
  ``trainer.should_stop``) unless its last file already holds that step (no second save).

A fit stopped by an exception (SIGTERM, Ctrl-C: ``dnlseg.callbacks.CheckpointOnSigterm``) does not end here.

**The record on resume.**

A resumed run restores each checkpoint callback's state (its last file, its best-k files and their scores) from
``last.ckpt``. That state can be older than the files on disk, because ``last.ckpt`` is written before the
validation of the same step and anything after it may be lost:

- ``last.ckpt`` saved by ``CheckpointOnSigterm`` before the first periodic save records no last file, so the
  resumed run, finding ``last.ckpt`` taken, would write ``last-v1.ckpt`` and leave ``last.ckpt`` stale;
- a best checkpoint saved after ``last.ckpt`` (the validation of that step, or later ones before a SIGKILL)
  has deleted the best file that ``last.ckpt`` records, so the "best" path printed at the end would not exist;
- a run folder moved or resumed from another working directory: Lightning restores nothing but the best path
  (of the old location).

``ResumableModelCheckpoint.load_state_dict`` therefore rebuilds the record from the files in its ``dirpath``:
the last file is ``<dirpath>/last.ckpt`` when it exists, and the best-k files are those that exist, each with
the score it recorded for itself when it was written (read from the file without loading its weights). The
resumed run then keeps writing ``last.ckpt`` and the best files it knows; the printed paths exist.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

log = logging.getLogger(__name__)


def own_score(path: Path, state_key: str) -> Tensor | None:
    """The score a best-k checkpoint file recorded for itself (in ``best_k_models`` of callback ``state_key``)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # unreadable or not a Lightning checkpoint: not one of ours
        return None
    state = checkpoint.get("callbacks", {}).get(state_key, {}) if isinstance(checkpoint, dict) else {}
    scores = {Path(p).name: v for p, v in state.get("best_k_models", {}).items()}
    score = scores.get(path.name)
    return score if isinstance(score, Tensor) else None


def is_final_batch(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the training batch ``batch_idx`` that just ended is the last one of the fit.

    That is the batch that reached ``max_steps``, or the last batch of the last epoch (``max_epochs``).
    """
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    last_epoch = max_epochs is not None and max_epochs != -1 and trainer.current_epoch + 1 >= max_epochs
    return last_epoch and batch_idx + 1 >= trainer.num_training_batches


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments): the last file is the final state, the restored record is reconciled with
    the files on disk (module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_saved_step: int | None = None  # the global step of the last file this fit wrote

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.save_last and is_final_batch(trainer, batch_idx):
            trainer.should_stop = True  # Lightning validates after a batch that stops the fit, then ends it

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and self.last_saved_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        super().on_train_end(trainer, pl_module)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self.last_saved_step = trainer.global_step

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Another folder (an evaluation's own, a moved run): Lightning keeps only best_model_path and warns that it
        # does, on every evaluation; the record is rebuilt from the files on disk below in any case.
        if state_dict.get("dirpath", self.dirpath) != self.dirpath:
            self.best_model_path = state_dict["best_model_path"]
        else:
            super().load_state_dict(state_dict)
        if self.dirpath is None:
            return
        folder = Path(self.dirpath)
        last = folder / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if self.save_last and last.is_file():
            self.last_model_path = str(last)
        if self.monitor is None or self.save_top_k == 0:
            self.best_model_path = self.best_model_path if Path(self.best_model_path or "").is_file() else ""
            return
        self.reconcile_best_k(folder)

    def reconcile_best_k(self, folder: Path) -> None:
        """Best-k record = the best-k files in ``folder`` with their own scores (the stale entries dropped)."""
        scores = {}
        for path in sorted(folder.glob(f"*{self.FILE_EXTENSION}")):
            if path.name.startswith(self.CHECKPOINT_NAME_LAST) or path.name.startswith("."):
                continue
            known = next((v for p, v in self.best_k_models.items() if Path(p).name == path.name), None)
            score = known if known is not None else own_score(path, self.state_key)
            if score is not None:
                scores[str(path)] = score
        reverse = self.mode == "max"
        ranked = sorted(scores, key=lambda p: float(scores[p]), reverse=reverse)
        if self.save_top_k > 0:
            ranked = ranked[: self.save_top_k]
        dropped = sorted(set(map(str, self.best_k_models)) - set(ranked))
        if dropped:
            log.info("checkpoint record: %s no longer on disk or not among the best; using %s", dropped, ranked)
        self.best_k_models = {p: scores[p] for p in ranked}
        self.best_model_path = ranked[0] if ranked else ""
        self.best_model_score = scores[ranked[0]] if ranked else None
        if ranked and len(ranked) == self.save_top_k:
            self.kth_best_model_path = ranked[-1]
            self.kth_value = scores[ranked[-1]]
        else:
            self.kth_best_model_path = ""
            self.kth_value = torch.tensor(-torch.inf if reverse else torch.inf)
