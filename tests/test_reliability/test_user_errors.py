"""A user's mistake ends the ``dnlseg`` command with one line, ``dnlseg: <what> <where>: <expected>``, a non-zero exit
and no traceback, and leaves no new run or evaluation folder behind."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from dnlseg.cli import run_dirs
from dnlseg.cli.lightning_cli import run_cli
from dnlseg.errors import CheckpointMismatchError
from tests.datasets import write_image_mask
from tests.helpers import damage, damage_points
from tests.recipes import recipe, resolved
from tests.test_reliability.runs import dnlseg, error_line, run_files, tiny_config

pytestmark = pytest.mark.slow


def folders(directory) -> set[str]:
    """Every folder under ``directory`` (a failed command must not add one)."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_dir()}


def own_data_config(directory, empty_val: bool):
    """The shipped own-data recipe shrunk to the CPU, on a tiny own dataset (its val split emptied if asked)."""
    root = write_image_mask(directory / "own")
    if empty_val:
        for path in (root / "images" / "val").rglob("*.png"):
            path.unlink()
    config = resolved(recipe("own_data/dnl_r50_d8_512x512_40k"))
    config["trainer"].update(accelerator="cpu", devices=1, strategy="auto", sync_batchnorm=False, max_steps=2)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(directory / "runs")
    config["model"]["network"].update(head_channels=8, aux_channels=8)
    config["model"]["network"]["encoder"]["name"] = "resnet18"
    config["data"]["init_args"].update(root=str(root))
    config["data"]["init_args"]["loader"].update(num_workers=0, batch_size=2)
    config["data"]["init_args"]["augmentation"]["crop_size"] = [32, 32]
    path = directory / "own.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def broken_checkpoints(finished_run, tmp_path):
    _, run = finished_run
    last = run / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[:4096])  # an interrupted copy
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    damaged = damage(last, tmp_path / "damaged.ckpt", damage_points(last)["tensor data"])  # 1 KB overwritten
    return {"truncated": truncated, "text": text, "last": last, "damaged": damaged}


CASES = {
    # name: (subcommand and arguments, the start of the expected message)
    "missing-checkpoint": (
        ["fit", "-c", "{config}", "--ckpt_path", "{tmp}/nope.ckpt"],
        "ckpt_path={tmp}/nope.ckpt: no such checkpoint file",
    ),
    "truncated-checkpoint": (
        ["validate", "-c", "{config}", "--ckpt_path", "{truncated}"],
        "ckpt_path={truncated}: not a complete PyTorch checkpoint",
    ),
    "text-as-checkpoint": (
        ["predict", "-c", "{config}", "--ckpt_path", "{text}"],
        "ckpt_path={text}: not a complete PyTorch checkpoint",
    ),
    "damaged-checkpoint": (
        ["validate", "-c", "{config}", "--ckpt_path", "{damaged}"],
        "ckpt_path={damaged}: the file is damaged, record archive/data/",
    ),
    "damaged-init-weights": (
        ["fit", "-c", "{config}", "--model.init_weights", "{damaged}"],
        "model.init_weights: {damaged}: the file is damaged, record archive/data/",
    ),
    "mismatched-checkpoint": (
        ["fit", "-c", "{config}", "--ckpt_path", "{last}", "--model.network.head_channels=16"],
        "the checkpoint does not fit the model built from this config:",
    ),
    "bad-value": (
        ["fit", "-c", "{config}", "--data.init_args.num_train=0"],
        "data (SyntheticDataModule): num_train=0 must be > 0",
    ),
    "bad-value-of-a-torch-module": (
        ["fit", "-c", "{config}", "--model.network.dropout=2"],
        "model (SegmentationModule): dropout probability has to be between 0 and 1, but got 2.0",
    ),
    "analyze-missing-checkpoint": (
        ["analyze", "-c", "{config}", "--ckpt_path", "{tmp}/nope.ckpt"],
        "--ckpt_path={tmp}/nope.ckpt: no such checkpoint file",
    ),
    "analyze-missing-config": (
        ["analyze", "-c", "{tmp}/nope.yaml", "--ckpt_path", "{last}"],
        "--config {tmp}/nope.yaml: no such file",
    ),
    "prepare-missing-root": (
        ["prepare", "cityscapes", "--root", "{tmp}/nope"],
        "Cityscapes root {tmp}/nope does not exist",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_mistake_is_one_line_with_a_non_zero_exit_and_leaves_no_folder(case, tmp_path, broken_checkpoints):
    args, message = CASES[case]
    values = {"tmp": tmp_path, "config": tiny_config(tmp_path), **broken_checkpoints}
    before = folders(tmp_path)
    result = dnlseg(*[arg.format(**values) for arg in args])
    assert result.returncode == 1, result.stderr[-3000:]
    assert error_line(result).startswith("dnlseg: " + message.format(**values)), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert folders(tmp_path) == before  # no run folder, no evaluation folder


def test_no_verify_evaluates_a_damaged_checkpoint_anyway(tmp_path, broken_checkpoints):
    config, damaged = tiny_config(tmp_path), broken_checkpoints["damaged"]
    result = dnlseg("--no_verify", "validate", "-c", str(config), "--ckpt_path", str(damaged))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validate: metrics written to" in result.stderr


def test_an_empty_split_fails_before_training_and_removes_the_run_folder_it_made(tmp_path):
    result = dnlseg("fit", "-c", str(own_data_config(tmp_path, empty_val=True)))
    assert result.returncode == 1
    assert error_line(result).startswith("dnlseg: dataset val (") and ": no images " in error_line(result)
    assert "images/val (empty split)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "dnl_r50_d8_512x512_40k" / "version_0").exists()


def test_a_fit_into_a_finished_run_without_resuming_is_refused_and_the_run_stays_as_it_was(finished_run):
    _, run = finished_run
    before = run_files(run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["ckpt_path"] = None  # the saved config as a fresh fit would read it, explicit version included
    fresh = run.parent.parent.parent / "fresh.yaml"
    fresh.write_text(yaml.safe_dump(config, sort_keys=False))
    result = dnlseg("fit", "-c", str(fresh))
    assert result.returncode == 1
    assert "already holds a run (its checkpoints/); a new fit there would overwrite them" in error_line(result)
    assert run_files(run) == before


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    result = dnlseg("--debug", "fit", "-c", str(tiny_config(tmp_path)), "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError: ckpt_path=" in result.stderr


def test_predict_that_would_write_nothing_says_so(tmp_path):
    config = yaml.safe_load(tiny_config(tmp_path).read_text())
    callbacks = config["trainer"]["callbacks"]
    config["trainer"]["callbacks"] = [c for c in callbacks if not c["class_path"].endswith("PredictionWriter")]
    path = tmp_path / "no_writer.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = dnlseg("predict", "-c", str(path))
    assert result.returncode == 1
    assert error_line(result).startswith("dnlseg: trainer.callbacks has no dnlseg.callbacks.PredictionWriter")
    assert not list(tmp_path.rglob("predict-*"))


def every_file(folder) -> dict[str, str]:
    """{path below ``folder``: sha256} of every file, the evaluation folders included."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


FAILED_RESUMES = {
    # a model config the checkpoint does not fit: refused before the fit starts
    "shape-mismatch": ["--model.network.context.init_args.reduction=4"],
    # an error after the fit wrote its config, events and hparams and restored the checkpoint, before its first step
    "failure-before-the-first-step": [
        "--trainer.max_steps=6",
        "--trainer.callbacks+=tests.test_reliability.faults.FailBeforeTraining",
    ],
}


@pytest.mark.parametrize("failure", FAILED_RESUMES)
def test_a_refused_or_failed_resume_leaves_every_file_of_the_run_byte_identical(finished_run, failure):
    _, run = finished_run
    config = str(run / "config.yaml")
    before = every_file(run)
    result = dnlseg("fit", "-c", config, "--ckpt_path", "last", *FAILED_RESUMES[failure])
    assert result.returncode == 1, result.stderr[-3000:]
    if failure == "shape-mismatch":
        assert error_line(result).startswith("dnlseg: the checkpoint does not fit the model built from this config")
        assert "decode_head.context.query.weight: checkpoint (4, 8, 1, 1) vs model (2, 8, 1, 1)" in result.stderr
    assert every_file(run) == before  # config.yaml, hparams.yaml, events, checkpoints: nothing added or changed
    validate = dnlseg("validate", "-c", config, "--ckpt_path", "last")
    assert validate.returncode == 0, validate.stderr[-3000:]


def test_a_resume_whose_checkpoint_does_not_fit_is_refused_before_the_trainer_starts(finished_run, monkeypatch):
    _, run = finished_run
    monkeypatch.setenv(run_dirs.FOLDER_ENV, "")  # the CLI sets it for DDP workers: put back after the test
    monkeypatch.setattr("sys.argv", ["dnlseg"])
    started = []  # Trainer.fit, validate, ...: everything that sets up, writes and restores
    monkeypatch.setattr(
        "lightning.pytorch.trainer.call._call_and_handle_interrupt",
        lambda trainer, *args, **kw: started.append(trainer),
    )
    args = [
        "fit",
        "-c",
        str(run / "config.yaml"),
        "--ckpt_path",
        "last",
        "--model.network.context.init_args.reduction=4",
    ]
    with pytest.raises(
        CheckpointMismatchError, match=r"query.weight: checkpoint \(4, 8, 1, 1\) vs model \(2, 8, 1, 1\)"
    ):
        run_cli(args)
    assert started == []
