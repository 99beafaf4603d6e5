"""data/loaders.py: the loader options every DataModule takes."""

import pytest

from dnlseg.data import LoaderOptions


@pytest.mark.parametrize(
    "batch_size, val_batch_size, num_workers, message",
    [
        (0, 1, 0, r"^loader.batch_size=0 must be >= 1$"),
        (1, 0, 0, r"^loader.val_batch_size=0 must be >= 1$"),
        (1, 1, -1, r"^loader.num_workers=-1 must be >= 0 \(0: load in the main process\)$"),
    ],
)
def test_batch_sizes_below_one_and_negative_workers_are_refused_naming_the_argument(
    batch_size, val_batch_size, num_workers, message
):
    with pytest.raises(ValueError, match=message):
        LoaderOptions(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers)
    LoaderOptions(batch_size=1, val_batch_size=1, num_workers=0)  # the smallest valid values


def test_a_null_val_batch_size_evaluates_in_batches_of_the_training_size():
    assert LoaderOptions(batch_size=3, val_batch_size=None).eval_batch_size == 3
    assert LoaderOptions(batch_size=3, val_batch_size=2).eval_batch_size == 2
