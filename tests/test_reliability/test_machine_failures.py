"""A failure of the machine -- a full or read-only disk, out of memory -- ends a command with one line that names the
path or what to reduce, exit status 1 and no traceback. The faults are injected where they happen: at the write of
a checkpoint, at the creation of the run folder, in a training or validation step."""

from __future__ import annotations

import errno
import os

import pytest
import yaml

from dnlseg.cli import command
from dnlseg.errors import DEBUG_ENV
from dnlseg.models import SegmentationModule
from tests.helpers import CPU_OUT_OF_MEMORY
from tests.test_reliability.runs import dnlseg, error_line, last_ckpt, tiny_config

pytestmark = pytest.mark.slow


def test_a_full_disk_at_a_checkpoint_save_is_one_line_naming_the_checkpoint(tmp_path):
    config = tiny_config(tmp_path, max_steps=4, every_n_train_steps=2)
    content = yaml.safe_load(config.read_text())
    content["trainer"]["plugins"] = [{"class_path": "tests.test_reliability.faults.FullDiskCheckpointIO"}]
    config.write_text(yaml.safe_dump(content, sort_keys=False))
    result = dnlseg("fit", "-c", str(config))
    assert result.returncode == 1, result.stderr[-3000:]
    assert error_line(result) == (
        f"dnlseg: {last_ckpt(tmp_path)}: no space left on device (ENOSPC); free space on that filesystem, or write "
        "elsewhere (--trainer.logger.init_args.save_dir=DIR); the files written before are intact (last.ckpt "
        "included: a checkpoint is replaced only once its new version is complete)"
    )
    assert "Traceback" not in result.stderr


def run_in_process(monkeypatch, *argv: str) -> str:
    """``dnlseg ARGV`` in this process; the one line it exits with."""
    monkeypatch.setenv(DEBUG_ENV, "0")
    with pytest.raises(SystemExit) as exit_:
        command.main(list(argv))
    assert isinstance(exit_.value.code, str)  # sys.exit(message): the message on stderr, status 1
    return exit_.value.code


def test_a_read_only_output_folder_is_one_line_naming_it(tmp_path, monkeypatch):
    runs, mkdir = tmp_path / "runs", os.mkdir

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(runs)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only)
    line = run_in_process(monkeypatch, "fit", "-c", str(tiny_config(tmp_path)))
    assert line.startswith(f"dnlseg: {runs}")
    assert line.endswith(": read-only file system (EROFS); write elsewhere (--trainer.logger.init_args.save_dir=DIR)")


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_out_of_memory_is_one_line_saying_what_to_reduce(tmp_path, monkeypatch, subcommand):
    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError(CPU_OUT_OF_MEMORY)

    monkeypatch.setattr(SegmentationModule, "training_step", out_of_memory)
    monkeypatch.setattr(SegmentationModule, "validation_step", out_of_memory)
    line = run_in_process(monkeypatch, subcommand, "-c", str(tiny_config(tmp_path)))
    reduce = "--data.init_args.loader.batch_size or crop" if subcommand == "fit" else "--model.inference.mode=slide"
    assert line.startswith(f"dnlseg: out of memory on the CPU (tried to allocate 32768.0 GiB) in {subcommand}: ")
    assert reduce in line
