"""Say, at the end of a fit, the final validation mIoU and where the logs and checkpoints are, each with its step.

The steps show what the numbers are: a fit that ends validates and saves ``last.ckpt`` at its final step
(``dnlseg.callbacks.ResumableModelCheckpoint``), so both name that step.

A resumed run that had already reached its end (``max_steps``) trains nothing; the summary says so and gives the
best score and checkpoints the run recorded, instead of a "final" mIoU it did not compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from dnlseg.cli.run_dirs import checkpoint_step


class FitSummary(L.Callback):
    """Logs (rank zero, INFO) the final ``val/mIoU``, the log directory and the last/best checkpoints, with steps."""

    def __init__(self) -> None:
        self.trained = False
        self.validated_at: int | None = None  # the global step of the latest validation (not the sanity check)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained = False
        self.validated_at = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.trained = True  # not called when the restored run is already done

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated_at = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # e.g. one keeping last.ckpt, one the best val/mIoU; read by their attributes (ModelCheckpoint's)
        callbacks: list[Any] = list(trainer.checkpoint_callbacks)
        best = next((cb for cb in callbacks if getattr(cb, "best_model_path", "")), None)
        if self.trained:
            miou = trainer.callback_metrics.get("val/mIoU")
            at = f" (step {self.validated_at})" if self.validated_at is not None else ""
            lines = [f"final val/mIoU: {miou.item():.4f}{at}" if miou is not None else "final val/mIoU: not computed"]
        else:
            lines = [
                f"the run was already complete at step {trainer.global_step} (max_steps={trainer.max_steps}): "
                "nothing trained"
            ]
            score = getattr(best, "best_model_score", None)
            if best is not None and score is not None:
                lines.append(f"best {best.monitor}: {float(score):.4f}")
        lines.append(f"logs: {trainer.log_dir}")
        if callbacks:
            last = next((cb.last_model_path for cb in callbacks if getattr(cb, "last_model_path", "")), "")
            lines.append(f"checkpoints: {getattr(callbacks[0], 'dirpath', '-')}")
            lines.append(f"  last: {existing(last)}\n  best: {existing(best.best_model_path if best else '')}")
        rank_zero_info("\n".join(lines))


def existing(path: str) -> str:
    """``path (step <n>)`` if that file exists (``path`` alone when no step can be read from it), else "-" (a path
    recorded before the file was removed)."""
    if not path or not Path(path).is_file():
        return "-"
    step = checkpoint_step(path)
    return f"{path} (step {step})" if step is not None else path
