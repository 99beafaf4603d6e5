"""A training DataLoader that Lightning can checkpoint and resume mid-epoch, with the same batches.

Lightning saves ``state_dict()`` of every train loader that has one in its checkpoints (``loops.fit_loop
.state_dict.combined_loader``) and hands it back to ``load_state_dict`` on resume. The state here is small:

- ``yielded``: batches this epoch's iterator has handed out (Lightning fetches map-style loaders without
  prefetching, so at a checkpoint this is the number of batches trained on in the epoch);
- the loader generator's state when the epoch's iterator was made (it draws the DataLoader workers' base
  seed from it) and its state now.

On resume the next iterator restarts from the saved generator state and skips the ``yielded`` batches in
the *index* sampler (``_index_sampler``), so no skipped image is read or augmented.

The order itself is ``dnlseg.data.loaders.train_sampler``'s (``DistributedSampler``, a function of
(seed, epoch) only); ``dnlseg.data.loaders.build_loader`` puts the two together.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader


class _SkipFirst:
    """Iterates ``sampler`` without its first ``n`` items; ``len`` stays the full length (Lightning counts on)."""

    def __init__(self, sampler, n: int) -> None:
        self.sampler = sampler
        self.n = n

    def __iter__(self) -> Iterator:
        return itertools.islice(iter(self.sampler), self.n, None)

    def __len__(self) -> int:
        return len(self.sampler)


class ResumableDataLoader(DataLoader):
    """``torch.utils.data.DataLoader`` with ``state_dict`` / ``load_state_dict`` for exact mid-epoch resume."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._skip = 0  # batches the next iterator leaves out (set by load_state_dict)
        self._generator_at_epoch_start: torch.Tensor | None = None

    @property
    def _index_sampler(self):
        sampler = super()._index_sampler
        return _SkipFirst(sampler, self._skip) if self._skip else sampler

    # A generator counting the batches it yields, not torch's _BaseDataLoaderIter: callers only iterate it.
    def __iter__(self) -> Iterator:  # type: ignore[override]
        if self.generator is not None:
            self._generator_at_epoch_start = self.generator.get_state()
        self._yielded = self._skip
        iterator = super().__iter__()  # reads _index_sampler: the skip applies to this epoch only
        self._skip = 0
        return self._counting(iterator)

    def _counting(self, iterator: Iterator) -> Iterator:
        for batch in iterator:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"yielded": self._yielded}
        if self.generator is not None:
            start = self._generator_at_epoch_start
            state["generator_at_epoch_start"] = start if start is not None else self.generator.get_state()
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        yielded = int(state["yielded"])
        finished = yielded >= len(self)  # saved on the epoch's last batch: the next epoch starts afresh
        self._skip = 0 if finished else yielded
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"] if finished else state["generator_at_epoch_start"])
