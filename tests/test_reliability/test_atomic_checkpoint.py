"""A process killed while it writes a checkpoint leaves the previous ``last.ckpt`` complete and loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from tests.test_reliability.runs import ROOT, dnlseg, env, last_ckpt, load, tiny_config


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "deep" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.arange(3)}, path)
    io.save_checkpoint({"global_step": 2, "w": torch.arange(4)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_failed_write_keeps_the_previous_file_and_removes_its_temporary(tmp_path):
    class FailingIO(AtomicCheckpointIO):
        def write(self, f, data):
            f.write(data[:10])
            raise OSError("disk full")

    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 1}, path)
    with pytest.raises(OSError, match="disk full"):
        FailingIO().save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_leaves_the_previous_last_ckpt_loadable(tmp_path):
    config = tiny_config(tmp_path)
    marker = tmp_path / "stalled"
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["plugins"] = [
        {
            "class_path": "tests.test_reliability.faults.StallingCheckpointIO",
            "init_args": {"stall_at_step": 4, "marker": str(marker)},
        }
    ]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    process = subprocess.Popen(
        [sys.executable, "-m", "dnlseg", "fit", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.communicate(timeout=5)[0][-3000:] if process.poll() is not None else "timeout"
        os.kill(process.pid, signal.SIGKILL)  # half of step 4's checkpoint is on disk
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    checkpoint_dir = last_ckpt(tmp_path).parent
    temporaries = [p for p in checkpoint_dir.iterdir() if p.name.startswith(".last.ckpt.")]
    assert len(temporaries) == 1  # the interrupted write: a separate file, never last.ckpt itself
    assert load(last_ckpt(tmp_path))["global_step"] == 2  # the previous checkpoint, intact

    result = dnlseg("fit", "-c", str(tiny_config(tmp_path, name="resume.yaml")), "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert load(last_ckpt(tmp_path))["global_step"] == 8
    assert not [p for p in checkpoint_dir.iterdir() if p.name.startswith(".last.ckpt.")]  # cleaned up
