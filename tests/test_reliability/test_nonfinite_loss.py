"""A NaN training loss stops the fit naming the step and the loss terms, or skips the batch; no NaN is saved."""

from __future__ import annotations

import pytest
import torch
import yaml

from dnlseg.errors import NonFiniteLossError
from dnlseg.models.nonfinite import skip_nonfinite_loss
from tests.test_reliability.runs import dnlseg, last_ckpt, load, tiny_config


def nan_config(tmp_path, nan_batches: list[int], **model):
    config = tiny_config(tmp_path, **model)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["class_path"] = "tests.test_reliability.faults.NaNSyntheticDataModule"
    cfg["data"]["init_args"]["nan_batches"] = nan_batches
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def test_stop_raises_naming_the_step_and_every_term():
    losses = {
        "loss": torch.tensor(float("nan")),
        "main_loss": torch.tensor(float("nan")),
        "aux_loss": torch.tensor(0.5),
    }
    with pytest.raises(NonFiniteLossError, match=r"step 7: loss=nan, main_loss=nan, aux_loss=0\.5"):
        skip_nonfinite_loss(losses, 7, "stop")
    assert skip_nonfinite_loss(losses, 7, "skip") is True
    assert skip_nonfinite_loss({"loss": torch.tensor(1.0)}, 7, "stop") is False


@pytest.mark.slow
def test_nan_loss_stops_the_fit_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path):
    result = dnlseg("fit", "-c", str(nan_config(tmp_path, nan_batches=[5])))
    assert result.returncode != 0
    assert "non-finite training loss at step 5: loss=nan, main_loss=nan, aux_loss=nan" in result.stderr
    assert "Traceback" not in result.stderr  # one message, not a stack trace
    checkpoint = load(last_ckpt(tmp_path))
    assert checkpoint["global_step"] == 4  # the last one saved before step 5; nothing written after
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


@pytest.mark.slow
def test_nan_loss_with_skip_drops_the_batch_and_trains_on(tmp_path):
    result = dnlseg("fit", "-c", str(nan_config(tmp_path, nan_batches=[1, 5], loss={"on_nonfinite": "skip"})))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "non-finite training loss at step 1" in result.stderr and "batch skipped" in result.stderr
    checkpoint = load(last_ckpt(tmp_path))
    assert checkpoint["global_step"] == 8  # 10 batches drawn, 2 skipped
    # BatchNorm running statistics included: the NaN forward left no trace.
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())
