"""A callback for the measurement: after every training step, the global step into a file (atomically)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class StepFile(L.Callback):
    """Writes ``trainer.global_step`` to ``path`` after every training batch.

    Args:
        path: the file.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(trainer.global_step))
        os.replace(tmp, self.path)
