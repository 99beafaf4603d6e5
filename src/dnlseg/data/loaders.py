"""How every DataModule builds its DataLoaders: the training order, the trainer's rank and world size, one builder.

Training loaders are ``ResumableDataLoader`` (mid-epoch resume) over ``train_sampler``'s order, a function of
(seed, epoch) only: one process sees the same global batches as W processes with 1/W of the batch each (DDP
parity), and an epoch's order does not depend on where the run was started from. Evaluation loaders keep the
dataset's order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from dnlseg.data.resumable import ResumableDataLoader


@dataclass(frozen=True)
class LoaderOptions:
    """The DataLoader settings of a DataModule (every dnlseg DataModule takes them as ``loader``).

    Args:
        batch_size: training images per batch and device (a recipe's global batch: this x the GPUs).
        val_batch_size: evaluation images per batch and device (1 where image sizes differ); null: ``batch_size``.
        num_workers: worker processes per loader (0: load in the main process).
        pin_memory: DataLoader ``pin_memory`` (honoured only when a CUDA device is present).
    """

    batch_size: int = 2
    val_batch_size: int | None = 1
    num_workers: int = 4
    pin_memory: bool = True

    def __post_init__(self) -> None:
        for name, value in (("batch_size", self.batch_size), ("val_batch_size", self.val_batch_size)):
            if value is not None and value < 1:
                raise ValueError(f"loader.{name}={value} must be >= 1")
        if self.num_workers < 0:
            raise ValueError(f"loader.num_workers={self.num_workers} must be >= 0 (0: load in the main process)")

    @property
    def eval_batch_size(self) -> int:
        """``val_batch_size``, or ``batch_size`` where it is null."""
        return self.batch_size if self.val_batch_size is None else self.val_batch_size


def train_sampler(dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1) -> DistributedSampler:
    """Shuffled order of (seed, epoch), this rank's 1/world_size share (interleaved; padded to a multiple).

    Lightning calls ``set_epoch`` on it every epoch and, since it already is a ``DistributedSampler``,
    does not replace it under DDP.
    """
    return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def trainer_rank_and_world_size(datamodule) -> tuple[int, int]:
    """(global rank, world size) of the DataModule's trainer; (0, 1) without one."""
    trainer = getattr(datamodule, "trainer", None)
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


def build_loader(
    dataset: Dataset,
    *,
    train: bool,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """A training loader (resumable, ``train_sampler``'s order, generator seeded with ``seed``) or an eval one.

    Args:
        dataset: the map-style dataset.
        train: training loader (shuffled, resumable) or evaluation loader (dataset order).
        batch_size: images per batch on this rank.
        seed: the order's seed (and the loader generator's, which draws the workers' base seed).
        rank: this process's global rank.
        world_size: number of processes.
        num_workers: worker processes (0: load in the main process).
        pin_memory: ``pin_memory`` when CUDA is available (ignored otherwise).
        drop_last: drop an incomplete last batch.
        worker_init_fn: called in each worker with its id.
    """
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "pin_memory": pin_memory and torch.cuda.is_available(),
        "persistent_workers": num_workers > 0,
        "drop_last": drop_last,
        "worker_init_fn": worker_init_fn,
    }
    if not train:
        return DataLoader(dataset, **common)
    return ResumableDataLoader(
        dataset,
        sampler=train_sampler(dataset, seed, rank, world_size),
        generator=torch.Generator().manual_seed(seed),
        **common,
    )
