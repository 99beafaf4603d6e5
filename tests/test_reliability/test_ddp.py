"""Two CPU processes (DDP, gloo, SyncBatchNorm) compute what one process computes on the same global batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from dnlseg.analysis.tensorboard_scalars import read_scalars
from tests.helpers import warning_lines
from tests.test_reliability.runs import dnlseg, last_ckpt, load, run_dir, tiny_config

pytestmark = pytest.mark.slow

GLOBAL_BATCH = 4


def ddp_config(directory, processes: int):
    """12 images, global batch 4 (3 steps an epoch), 4 steps, validation after 2 and 4; no dropout."""
    config = tiny_config(
        directory, max_steps=4, every_n_train_steps=4, val_check_interval=2, batch_size=GLOBAL_BATCH // processes
    )
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["network"]["dropout"] = 0.0  # each process draws its own dropout masks: the one random difference
    cfg["trainer"].update(accelerator="cpu", devices=processes, strategy="ddp" if processes > 1 else "auto")
    cfg["trainer"]["sync_batchnorm"] = processes > 1
    if processes > 1:
        cfg["trainer"]["plugins"].append({"class_path": "dnlseg.models.sync_batchnorm.SyncBatchNormPlugin"})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for processes in (1, 2):
        directory = tmp_path_factory.mktemp(f"processes{processes}")
        result = dnlseg("fit", "-c", str(ddp_config(directory, processes)), timeout=600, show_warnings=True)
        assert result.returncode == 0, result.stderr[-4000:]
        (directory / "output.txt").write_text(result.stdout + result.stderr)
        out[processes] = directory
    return out


def test_two_processes_print_no_warning(runs):
    assert warning_lines((runs[2] / "output.txt").read_text()) == []  # e.g. Lightning's sync_dist one, per metric


def test_two_processes_give_the_loss_curve_and_weights_of_one(runs):
    one, two = read_scalars(run_dir(runs[1])), read_scalars(run_dir(runs[2]))
    for tag in ("train/loss", "train/main_loss", "train/aux_loss"):
        assert one[tag][0].tolist() == two[tag][0].tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(two[tag][1], one[tag][1], rtol=0, atol=1e-5)
    a, b = load(last_ckpt(runs[1]))["state_dict"], load(last_ckpt(runs[2]))["state_dict"]
    assert a.keys() == b.keys()
    for name in a:
        if a[name].is_floating_point():
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
        else:
            assert torch.equal(b[name], a[name]), name


def test_validation_miou_is_aggregated_over_both_processes(runs):
    one, two = read_scalars(run_dir(runs[1])), read_scalars(run_dir(runs[2]))
    assert one["val/mIoU"][0].tolist() == two["val/mIoU"][0].tolist() == [1, 3]
    np.testing.assert_allclose(two["val/mIoU"][1], one["val/mIoU"][1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(two["val/pixel_acc"][1], one["val/pixel_acc"][1], rtol=0, atol=1e-6)
