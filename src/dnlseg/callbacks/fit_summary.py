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
        ckpt = trainer.checkpoint_callback
        if ckpt is not None:
            lines.append(f"checkpoints: {ckpt.dirpath}")
            lines.append(f"  last: {ckpt.last_model_path or '-'}\n  best: {ckpt.best_model_path or '-'}")
        rank_zero_info("\n".join(lines))
