"""Say, at the end of a fit, the final validation mIoU and where the logs and checkpoints are."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class FitSummary(L.Callback):
    """Logs (rank zero, INFO) the final ``val/mIoU``, the log directory and the last/best checkpoints."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        miou = trainer.callback_metrics.get("val/mIoU")
        lines = [f"final val/mIoU: {miou.item():.4f}" if miou is not None else "final val/mIoU: not computed"]
        lines.append(f"logs: {trainer.log_dir}")
        callbacks = trainer.checkpoint_callbacks  # e.g. one keeping last.ckpt, one the best val/mIoU
        if callbacks:
            last = next((cb.last_model_path for cb in callbacks if getattr(cb, "last_model_path", "")), "-")
            best = next((cb.best_model_path for cb in callbacks if getattr(cb, "best_model_path", "")), "-")
            lines.append(f"checkpoints: {getattr(callbacks[0], 'dirpath', '-')}")
            lines.append(f"  last: {last}\n  best: {best}")
        rank_zero_info("\n".join(lines))
