"""``ResumableDataLoader``: a loader restored from ``state_dict`` continues the epoch with the same batches."""

import pytest
import torch
from torch.utils.data import Dataset

from dnlseg.data import ResumableDataLoader
from dnlseg.data.loaders import train_sampler


class Indices(Dataset):
    """Item i is (i, a draw from the worker's torch RNG): shows both the order and the worker seeding."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int):
        return torch.tensor([index, int(torch.randint(0, 2**30, ()))])


def loader(num_workers: int = 0, rank: int = 0, world_size: int = 1) -> ResumableDataLoader:
    data = Indices()
    return ResumableDataLoader(
        data,
        batch_size=2,
        sampler=train_sampler(data, seed=3, rank=rank, world_size=world_size),
        generator=torch.Generator().manual_seed(3),
        num_workers=num_workers,
    )


def epochs(dl: ResumableDataLoader, first_epoch: int, count: int) -> list[list[int]]:
    out = []
    for epoch in range(first_epoch, first_epoch + count):
        dl.sampler.set_epoch(epoch)  # what Lightning does every epoch
        out.append([row for batch in dl for row in batch.tolist()])
    return out


def index_of(rows: list[list[int]]) -> list[int]:
    return [row[0] for row in rows]


@pytest.mark.parametrize("num_workers", [0, 1])
@pytest.mark.parametrize("stop_after", [2, 5])  # mid-epoch, and after the epoch's last batch
def test_restored_loader_continues_with_the_same_batches(num_workers, stop_after):
    reference = epochs(loader(num_workers), 0, 3)
    first = loader(num_workers)
    first.sampler.set_epoch(0)
    seen = []
    for batch in first:
        seen += batch.tolist()
        if len(seen) == 2 * stop_after:
            break
    state = first.state_dict()
    assert state["yielded"] == stop_after

    resumed = loader(num_workers)
    resumed.load_state_dict(state)
    if stop_after < len(resumed):  # the rest of the epoch: the same images (worker draws restart: not compared)
        assert index_of(seen + epochs(resumed, 0, 1)[0]) == index_of(reference[0])
    later = epochs(resumed, 1, 2)
    assert [index_of(e) for e in later] == [index_of(e) for e in reference[1:]]
    if num_workers:  # the workers of later epochs are seeded as in the uninterrupted run
        assert later == reference[1:]


def test_two_ranks_together_draw_the_one_process_batches():
    one = epochs(loader(), 0, 1)[0]
    ranks = [epochs(loader(rank=r, world_size=2), 0, 1)[0] for r in (0, 1)]
    indices = [row[0] for row in one]
    global_batches = [sorted(indices[i : i + 2]) for i in range(0, len(indices), 2)]
    per_rank = [[row[0] for row in rows] for rows in ranks]
    # rank r takes every other image of the same order; a global step of 2 x batch 1 == batch 2 of one process
    assert [sorted([per_rank[0][k], per_rank[1][k]]) for k in range(5)] == global_batches
