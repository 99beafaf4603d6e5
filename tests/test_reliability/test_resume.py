"""A fit stopped by SIGTERM or killed by SIGKILL resumes with ``--ckpt_path last`` to exactly the uninterrupted run.

Tiny runs through the ``dnlseg`` command: 8 steps over 12 images in batches of 2 (epochs of 6 steps, so the
interruptions fall mid-epoch and the resumed run crosses an epoch boundary), last.ckpt every 2 steps,
validation every 4, dropout on (the shipped default 0.1).
"""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch

from dnlseg.evaluation.tensorboard_scalars import read_scalars
from tests.test_reliability.runs import (
    dnlseg,
    interrupt_at,
    last_ckpt,
    run_dir,
    saved_step,
    tiny_config,
    training_state,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    result = dnlseg("fit", "-c", str(tiny_config(directory)))
    assert result.returncode == 0, result.stderr[-3000:]
    return directory


def assert_same_training_state(resumed, reference) -> None:
    a, b = training_state(last_ckpt(resumed)), training_state(last_ckpt(reference))
    assert a["global_step"] == b["global_step"] == 8
    assert a["epoch"] == b["epoch"] and a["batches_that_stepped"] == b["batches_that_stepped"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [name for name in a["state_dict"] if not torch.equal(a["state_dict"][name], b["state_dict"][name])]
    assert differ == [], f"weights differ bitwise: {differ[:5]}"
    for state_a, state_b in zip(a["optimizer"], b["optimizer"], strict=True):
        for key, buffers in state_a["state"].items():
            assert torch.equal(buffers["momentum_buffer"], state_b["state"][key]["momentum_buffer"])
        assert state_a["param_groups"] == state_b["param_groups"]  # lr included
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_sigterm_saves_last_checkpoint_exits_143_and_resume_is_bitwise_exact(uninterrupted, tmp_path):
    config = tiny_config(tmp_path)
    status, output = interrupt_at(["fit", "-c", str(config)], tmp_path, step=2, sig=signal.SIGTERM)
    assert status == 143, output[-3000:]
    stopped_at = saved_step(last_ckpt(tmp_path))
    assert stopped_at is not None and 2 <= stopped_at < 8, output[-3000:]
    assert f"SIGTERM at step {stopped_at}: saved" in output

    result = dnlseg("fit", "-c", str(config), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states" in result.stderr + result.stdout
    assert_same_training_state(tmp_path, uninterrupted)
    # The logged curve is the uninterrupted one, step for step (one TensorBoard folder, no step logged twice).
    resumed, reference = read_scalars(run_dir(tmp_path)), read_scalars(run_dir(uninterrupted))
    for tag in ("train/loss", "lr-SGD"):
        assert resumed[tag][0].tolist() == reference[tag][0].tolist() == list(range(8))
        np.testing.assert_array_equal(resumed[tag][1], reference[tag][1])


def test_sigkill_after_a_checkpoint_resumes_bitwise_exact(uninterrupted, tmp_path):
    config = tiny_config(tmp_path)
    status, output = interrupt_at(["fit", "-c", str(config)], tmp_path, step=2, sig=signal.SIGKILL)
    assert status == -signal.SIGKILL, output[-3000:]
    assert 2 <= saved_step(last_ckpt(tmp_path)) < 8

    result = dnlseg("fit", "-c", str(config), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training_state(tmp_path, uninterrupted)
