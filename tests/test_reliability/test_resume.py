"""A fit stopped by SIGTERM or Ctrl-C, or killed by SIGKILL, resumes with ``--ckpt_path last`` to exactly the
uninterrupted run; a fit that ends validates and saves its final step.

Tiny runs through the ``dnlseg`` command: 8 steps over 12 images in batches of 2 (epochs of 6 steps, so the
interruptions fall mid-epoch and the resumed run crosses an epoch boundary), last.ckpt every 2 steps,
validation every 4, dropout on (the shipped default 0.1).
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dnlseg.analysis.tensorboard_scalars import read_scalars
from tests.test_reliability.runs import (
    dnlseg,
    interrupt_at,
    last_ckpt,
    printed_checkpoints,
    run_dir,
    saved_step,
    signal_when,
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


def assert_same_training_state(resumed, reference, loops: bool = True) -> None:
    """Same step, weights, optimiser and schedule; ``loops``: also the loop counters (same save point)."""
    a, b = training_state(last_ckpt(resumed)), training_state(last_ckpt(reference))
    assert a["global_step"] == b["global_step"] == 8
    if loops:
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


def test_sigterm_before_the_first_periodic_save_resumes_into_the_same_last_ckpt(uninterrupted, tmp_path):
    """No periodic save before step 50: the SIGTERM save is the first last.ckpt; resuming keeps writing that file."""
    config = tiny_config(tmp_path, every_n_train_steps=50)
    cfg = yaml.safe_load(config.read_text())
    marker = tmp_path / "step3.done"
    cfg["trainer"]["callbacks"].append(
        {"class_path": "tests.test_reliability.faults.MarkStep", "init_args": {"step": 3, "marker": str(marker)}}
    )
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    status, output = signal_when(["fit", "-c", str(config)], marker.exists, signal.SIGTERM)
    assert status == 143, output[-3000:]
    assert 3 <= saved_step(last_ckpt(tmp_path)) < 8

    result = dnlseg("fit", "-c", str(config), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = sorted(p.name for p in last_ckpt(tmp_path).parent.glob("last*.ckpt"))
    assert checkpoints == ["last.ckpt"]  # no last-v1.ckpt beside a stale last.ckpt
    assert saved_step(last_ckpt(tmp_path)) == 8
    # saved at the end of the fit, not after step 8 as the reference's periodic save: loop counters differ
    assert_same_training_state(tmp_path, uninterrupted, loops=False)
    printed = printed_checkpoints(result.stderr + result.stdout)
    assert printed["last"] == str(last_ckpt(tmp_path)) and Path(printed["best"]).is_file()


def test_resuming_a_finished_run_says_so_and_prints_checkpoints_that_exist(uninterrupted):
    """last.ckpt of step 8 was written before the validation of step 8, whose best checkpoint replaced the one
    last.ckpt records: the printed best path is the file on disk, not the record."""
    result = dnlseg("fit", "-c", str(uninterrupted / "config.yaml"), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stderr + result.stdout
    assert "the run was already complete at step 8 (max_steps=8): nothing trained" in output
    assert "final val/mIoU" not in output
    printed = printed_checkpoints(output)
    assert Path(printed["last"]).is_file() and Path(printed["best"]).is_file(), printed
    assert Path(printed["best"]).name.startswith("step8-")


def logged_validations(run: Path) -> list[int]:
    """The global steps whose validation is in the events (Lightning logs it at the step's 0-based batch count)."""
    steps, _ = read_scalars(run)["val/mIoU"]
    return [int(step) + 1 for step in steps]


def test_a_fit_ending_between_save_and_validation_steps_ends_validated_and_saved_and_resumes_to_that_end(tmp_path):
    """max_steps=7 with last.ckpt every 2 and validation every 4: the final step 7 is validated and saved, named by
    the summary, and a run stopped by SIGTERM and resumed ends the same way, bitwise."""
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    reference.mkdir()
    interrupted.mkdir()
    result = dnlseg("fit", "-c", str(tiny_config(reference, max_steps=7)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert saved_step(last_ckpt(reference)) == 7
    assert logged_validations(run_dir(reference)) == [4, 7]
    _, values = read_scalars(run_dir(reference))["val/mIoU"]
    output = result.stderr + result.stdout
    assert f"final val/mIoU: {values[-1]:.4f} (step 7)" in output
    assert f"last: {last_ckpt(reference)} (step 7)" in output

    config = tiny_config(interrupted, max_steps=7)
    status, output = interrupt_at(["fit", "-c", str(config)], interrupted, step=2, sig=signal.SIGTERM)
    assert status == 143 and saved_step(last_ckpt(interrupted)) < 7, output[-3000:]
    result = dnlseg("fit", "-c", str(config), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert logged_validations(run_dir(interrupted)) == [4, 7]
    a, b = training_state(last_ckpt(interrupted)), training_state(last_ckpt(reference))
    assert a["global_step"] == b["global_step"] == 7 and a["epoch"] == b["epoch"]
    assert a["batches_that_stepped"] == b["batches_that_stepped"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in b["state_dict"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_ctrl_c_saves_last_ckpt_exits_130_and_resume_is_bitwise_exact_in_the_same_folder(uninterrupted, tmp_path):
    config = tiny_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    marker = tmp_path / "step3.done"
    cfg["trainer"]["callbacks"].append(
        {"class_path": "tests.test_reliability.faults.MarkStep", "init_args": {"step": 3, "marker": str(marker)}}
    )
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    status, output = signal_when(["fit", "-c", str(config)], marker.exists, signal.SIGINT)
    assert status == 130, output[-3000:]
    stopped_at = saved_step(last_ckpt(tmp_path))
    assert stopped_at is not None and 3 <= stopped_at < 8, output[-3000:]
    assert f"SIGINT at step {stopped_at}: saved {last_ckpt(tmp_path)}; resume with" in output
    assert "KeyboardInterrupt" not in output

    result = dnlseg("fit", "-c", str(config), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run_dir(tmp_path).parent.iterdir()) == ["version_0"]  # resumed where it stopped
    assert_same_training_state(tmp_path, uninterrupted)


def test_ctrl_c_during_the_first_validation_leaves_a_last_ckpt_that_resumes_in_the_same_folder(tmp_path):
    """No periodic save before step 50: the validation of step 4 is interrupted; last.ckpt of step 4 is saved."""
    config = tiny_config(tmp_path, every_n_train_steps=50)
    cfg = yaml.safe_load(config.read_text())
    marker = tmp_path / "validating"
    cfg["trainer"]["callbacks"].append(
        {"class_path": "tests.test_reliability.faults.MarkValidation", "init_args": {"marker": str(marker)}}
    )
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    status, output = signal_when(["fit", "-c", str(config)], marker.exists, signal.SIGINT)
    assert status == 130, output[-3000:]
    assert saved_step(last_ckpt(tmp_path)) == 4, output[-3000:]
    assert "SIGINT at step 4: saved" in output

    result = dnlseg("fit", "-c", str(config), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in run_dir(tmp_path).parent.iterdir()) == ["version_0"]
    assert saved_step(last_ckpt(tmp_path)) == 8


def test_ctrl_c_before_the_first_training_step_leaves_no_run_folder(tmp_path):
    """Nothing trained, nothing to resume: the new run's folder is removed, so `--ckpt_path last` skips nothing."""
    config = tiny_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    marker = tmp_path / "starting"
    cfg["trainer"]["callbacks"].append(
        {"class_path": "tests.test_reliability.faults.StallBeforeTraining", "init_args": {"marker": str(marker)}}
    )
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    status, output = signal_when(["fit", "-c", str(config)], marker.exists, signal.SIGINT)
    assert status == 130, output[-3000:]
    assert "SIGINT before the first training step of this fit: nothing trained, nothing saved" in output
    assert not (tmp_path / "runs" / "dnl").exists(), output[-3000:]
