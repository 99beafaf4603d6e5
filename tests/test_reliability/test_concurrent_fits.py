"""Fits started at once never share a run folder: a new run claims its ``version_<n>`` with ``mkdir`` (one process
wins, the other takes the next number), and a run being written is locked against a second fit resuming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.test_reliability.runs import ROOT, env, error_line, saved_step, tiny_config

pytestmark = pytest.mark.slow


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dnlseg", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env(), cwd=ROOT,
    )  # fmt: skip


def finish(process: subprocess.Popen) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=300)
    return process.returncode, stderr


def test_two_fits_started_at_once_take_two_folders_and_two_resumes_of_one_run_do_not_both_write_it(tmp_path):
    config = str(tiny_config(tmp_path, max_steps=2))
    first, second = start("fit", "-c", config), start("fit", "-c", config)
    for status, stderr in (finish(first), finish(second)):
        assert status == 0, stderr[-3000:]
    runs = tmp_path / "runs" / "dnl"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    for run in runs.iterdir():
        assert sorted(p.name for p in (run / "checkpoints").glob("last*.ckpt")) == ["last.ckpt"]  # no last-v1.ckpt
        assert len(list(run.glob("events.out.tfevents.*"))) == 1

    run = runs / "version_1"
    resume = ("fit", "-c", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.max_steps=4")
    results = [finish(process) for process in (start(*resume), start(*resume))]
    assert sorted(status for status, _ in results) == [0, 1], [stderr[-2000:] for _, stderr in results]
    refused = next(stderr for status, stderr in results if status == 1)
    line = error_line(subprocess.CompletedProcess([], 1, "", refused))
    assert line == (
        f"dnlseg: trainer.logger.init_args.version: {run} is being written by another dnlseg fit (it holds the run "
        "folder's lock); wait for that fit to end: two fits writing one run would mix its checkpoints and events"
    )
    assert saved_step(run / "checkpoints" / "last.ckpt") == 4
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # the first fit's and the one resume's
