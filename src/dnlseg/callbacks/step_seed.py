"""Reseed the global torch RNG before every training step from (seed, step, rank).

What a training step draws from the global RNG (dropout masks) is then a function of the run's seed, the
step and the process rank, not of everything that ran before it: a run resumed from a checkpoint draws
exactly what the uninterrupted run drew, whatever validation, probes or data loading consumed in between,
without any RNG state in the checkpoint.
"""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed from (seed, step, rank), well mixed (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed % 2**63, step, rank]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class StepSeed(L.Callback):
    """``torch.manual_seed(step_seed(seed, global_step, global_rank))`` at the start of every training batch.

    Args:
        seed: the base seed; null: the run's ``seed_everything`` seed (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def base_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.base_seed(), trainer.global_step, trainer.global_rank))
