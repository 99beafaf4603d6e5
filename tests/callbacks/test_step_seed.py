"""StepSeed: the global RNG is reseeded every training step from (seed, step, rank)."""

import numpy as np
import pytest
import torch

from dnlseg.callbacks import StepSeed
from dnlseg.callbacks.step_seed import step_seed
from tests.helpers import fake_trainer


def test_step_seed_is_numpys_seed_sequence_of_seed_step_rank_in_63_bits():
    # Known values: the first uint64 word of SeedSequence([seed, step, rank]).generate_state(2, uint64), shifted
    # right by one bit so it fits torch.manual_seed's signed 64-bit range.
    assert step_seed(0, 0, 0) == 7896617691693857887
    assert step_seed(7, 100, 3) == 358313344774159895
    assert step_seed(2**63 + 7, 100, 3) == step_seed(7, 100, 3)  # seeds wrap at 2**63
    seeds = {step_seed(s, t, r) for s in (0, 1) for t in range(50) for r in range(4)}
    assert len(seeds) == 2 * 50 * 4 and all(0 <= s < 2**63 for s in seeds)


def dropout_mask_after(callback, step, rank, junk_draws=0):
    torch.rand(junk_draws)  # whatever ran before the step (validation, probes) consumed some random numbers
    callback.on_train_batch_start(fake_trainer(global_step=step, global_rank=rank), None, None, 0)
    return torch.nn.functional.dropout(torch.ones(64), 0.5)


def test_a_step_draws_the_same_dropout_mask_whatever_ran_before_it():
    callback = StepSeed(seed=3)
    assert torch.equal(dropout_mask_after(callback, 5, 0), dropout_mask_after(callback, 5, 0, junk_draws=17))
    torch.manual_seed(step_seed(3, 5, 0))
    expected = torch.nn.functional.dropout(torch.ones(64), 0.5)
    assert torch.equal(dropout_mask_after(callback, 5, 0), expected)


def test_each_rank_and_each_step_draws_its_own_dropout_mask():
    callback = StepSeed(seed=3)
    masks = [dropout_mask_after(callback, step, rank) for step in (5, 6) for rank in (0, 1)]
    assert len({tuple(m.tolist()) for m in masks}) == 4


def test_base_seed_is_the_given_seed_else_the_runs_global_seed_else_0(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "42")
    assert StepSeed(seed=3).base_seed() == 3
    assert StepSeed().base_seed() == 42
    callback = StepSeed()
    callback.on_train_batch_start(fake_trainer(global_step=2, global_rank=1), None, None, 0)
    assert torch.initial_seed() == step_seed(42, 2, 1)
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert StepSeed().base_seed() == 0


@pytest.mark.parametrize("seed", [0, 2**62])
def test_the_seed_is_accepted_by_torch_and_numpy(seed):
    value = step_seed(seed, 10**6, 1023)
    torch.manual_seed(value)
    np.random.default_rng(value)
