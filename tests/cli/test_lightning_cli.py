"""The ``dnlseg`` command as a user runs it: fit through the console script, then validate the checkpoint."""

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dnlseg.data
from dnlseg.analysis.tensorboard_scalars import read_scalars
from dnlseg.cli.lightning_cli import resolve_config, run_cli
from dnlseg.data import SegmentationDataModule
from dnlseg.errors import ConfigError, UserError
from tests.helpers import TINY
from tests.recipes import ONE_CPU_PROCESS

ROOT = Path(__file__).resolve().parents[2]


def dnlseg_executable() -> str:
    found = shutil.which("dnlseg", path=str(Path(sys.executable).parent))
    assert found, "the dnlseg console script is not installed next to this Python"
    return found


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """One tiny DNL fit through the console script, with a command-line override of the temperature."""
    save_dir = tmp_path_factory.mktemp("runs")
    cmd = [
        dnlseg_executable(),
        "fit",
        "-c",
        str(ROOT / "configs/synthetic/dnl.yaml"),
        *TINY,
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--model.network.context.init_args.temperature=0.1",
    ]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return save_dir, result


@pytest.mark.slow
def test_fit_writes_checkpoint_config_and_tensorboard_scalars(fitted_run):
    save_dir, result = fitted_run
    (run_dir,) = [p for p in save_dir.glob("dnl/version_*")]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("step*-miou*.ckpt"))) == 1
    config = (run_dir / "config.yaml").read_text()
    assert "temperature: 0.1" in config  # the command-line override is what the saved config holds
    scalars = read_scalars(run_dir)
    assert {"train/loss", "train/aux_loss", "val/mIoU", "val/pixel_acc", "lr-SGD"} <= scalars.keys()
    # Lightning logs a validation run after optimizer step k at step k - 1: validation after steps 2 and 4.
    assert scalars["val/mIoU"][0].tolist() == [1, 3]
    assert np.isfinite(scalars["train/loss"][1]).all()
    assert any(tag.startswith("val/IoU/") for tag in scalars)
    assert "final val/mIoU" in result.stderr + result.stdout and "last.ckpt" in result.stderr + result.stdout


@pytest.mark.slow
def test_validate_reproduces_the_logged_miou_from_the_checkpoint(fitted_run, tmp_path):
    save_dir, _ = fitted_run
    (run_dir,) = [p for p in save_dir.glob("dnl/version_*")]
    logged = read_scalars(run_dir)["val/mIoU"][1][-1]
    cli = run_cli(
        [
            "validate",
            "-c",
            str(run_dir / "config.yaml"),
            "--ckpt_path",
            str(run_dir / "checkpoints" / "last.ckpt"),
            f"--trainer.logger.init_args.save_dir={tmp_path}",
        ]
    )
    assert cli.trainer.callback_metrics["val/mIoU"].item() == pytest.approx(logged, abs=1e-4)


@pytest.mark.slow
def test_validate_logs_at_the_checkpoints_step_in_an_eval_run_of_its_own(fitted_run):
    """A step-4 checkpoint's evaluation plots at step 4 beside the training curve (not at step 0), in a TensorBoard
    run of its own under ``<run>/eval/``, its attention figures too; metrics.json says the step and its source."""
    save_dir, _ = fitted_run
    (run_dir,) = [p for p in save_dir.glob("dnl/version_*")]
    cli = run_cli(["validate", "-c", str(run_dir / "config.yaml"), "--ckpt_path", "last"])
    log_dir = Path(cli.trainer.logger.log_dir)
    assert log_dir.parent == run_dir / "eval" / "last"
    scalars = read_scalars(log_dir)
    assert scalars["val/mIoU"][0].tolist() == [4] and scalars["val/loss"][0].tolist() == [4]
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    accumulator.Reload()
    images = accumulator.Tags()["images"]
    assert images and all([e.step for e in accumulator.Images(tag)] == [4] for tag in images)
    record = json.loads((log_dir / "metrics.json").read_text())
    assert (record["step"], record["step_source"]) == (4, "global_step of the checkpoint")


@pytest.mark.slow
def test_the_saved_config_of_a_composed_recipe_resumes_the_run(fitted_run):
    """The run's config.yaml is the whole config (no ``config:`` key naming the recipe's shared file): it resumes.
    (After the validation above, which reads the run as the fit left it.)"""
    save_dir, _ = fitted_run
    (run_dir,) = [p for p in save_dir.glob("dnl/version_*")]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "config" not in saved and saved["trainer"]["max_steps"] == 4
    assert saved["data"]["init_args"]["num_train"] == 16 and len(saved["trainer"]["callbacks"]) == 11
    resumed = run_cli(["fit", "-c", str(run_dir / "config.yaml"), "--ckpt_path", "last", "--trainer.max_steps=5"])
    assert resumed.trainer.global_step == 5 and resumed.trainer.logger.log_dir == str(run_dir)


def test_print_config_shows_the_resolved_model_and_data():
    result = subprocess.run(
        [sys.executable, "-m", "dnlseg", "fit", "-c", str(ROOT / "configs/synthetic/dnl.yaml"), "--print_config"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "class_path: dnlseg.context.DisentangledNonLocal2d" in result.stdout
    assert "temperature: 0.05" in result.stdout and "class_path: dnlseg.data.SyntheticDataModule" in result.stdout
    # The whole config, the recipe's shared file merged in (max_steps, the callbacks): what resolve_config gives
    printed = yaml.safe_load(result.stdout)
    assert printed["trainer"]["max_steps"] == 800 and len(printed["trainer"]["callbacks"]) == 11
    fit_only = {"ckpt_path", "weights_only"}  # arguments of the fit subcommand, not of a config file
    whole = resolve_config(ROOT / "configs/synthetic/dnl.yaml")
    assert {k: v for k, v in printed.items() if k not in fit_only} == whole


def test_fit_help_offers_only_the_concrete_datamodules():
    # A fresh process: DataModule subclasses that other tests define must not show up in the list.
    result = subprocess.run(
        [sys.executable, "-m", "dnlseg", "fit", "--help"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = " ".join(result.stdout.split())
    entry = text[text.index("for any subclass of SegmentationDataModule") :]  # the help of --data
    known = entry.split("known subclasses: ", 1)[1].split(")", 1)[0]
    concrete = [c for c in vars(dnlseg.data).values() if isinstance(c, type) and issubclass(c, SegmentationDataModule)]
    assert sorted(name.strip() for name in known.split(",")) == sorted(
        f"dnlseg.data.{c.__name__}" for c in concrete if not inspect.isabstract(c)
    )  # every DataModule dnlseg.data exports, not the abstract FolderDataModule / SegmentationDataModule
    assert "dnlseg.data.CityscapesDataModule" in known and inspect.isabstract(dnlseg.data.FolderDataModule)


def test_resolve_config_merges_the_recipe_its_shared_file_and_overrides_and_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run folder would appear here (runs/synthetic/...)
    torch_seed = torch.initial_seed()
    whole = resolve_config(ROOT / "configs/synthetic/gc.yaml", "--model.network.context.init_args.reduction=8")
    assert whole["model"]["network"]["context"] == {
        "class_path": "dnlseg.context.GlobalContext2d",
        "init_args": {"reduction": 8},
    }
    assert whole["trainer"]["max_steps"] == 800 and whole["trainer"]["logger"]["init_args"]["name"] == "gc"
    assert whole["data"]["class_path"] == "dnlseg.data.SyntheticDataModule" and "config" not in whole
    assert list(tmp_path.iterdir()) == [] and torch.initial_seed() == torch_seed  # no folder, no seeding


OWN_DATA = str(ROOT / "configs/own_data/dnl_r50_d8_512x512_40k.yaml")
ON_CPU = ONE_CPU_PROCESS


def test_a_bad_file_behind_a_config_value_is_reported_with_its_own_message_naming_the_file(image_mask_root, tmp_path):
    text = tmp_path / "resnet50.pth"
    text.write_text("not weights\n")
    with pytest.raises(UserError) as error:
        run_cli(["-c", str(ROOT / "configs/synthetic/dnl.yaml"), f"--model.network.encoder.weights={text}"], run=False)
    assert str(error.value) == (
        f"model.network.encoder.weights: {text} is not a file torch.load (or safetensors) can read "
        "(not a PyTorch pickle)"
    )
    root = tmp_path / "own"
    shutil.copytree(image_mask_root, root)
    (root / "classes.yaml").write_text("- name: [a, b\n")
    with pytest.raises(UserError) as error:
        run_cli(["-c", OWN_DATA, *ON_CPU, f"--data.init_args.root={root}"], run=False)
    assert str(error.value) == (
        f"class list {root / 'classes.yaml'}: expected a YAML list of {{name: ..., color: [r, g, b], value: "
        "(optional)} (while parsing a flow sequence: expected ',' or ']', but got '<stream end>' at line 2, column 1)"
    )


def test_a_trainer_value_lightning_refuses_is_one_line_naming_the_trainer():
    with pytest.raises(ConfigError) as error:
        run_cli(["-c", str(ROOT / "configs/synthetic/dnl.yaml"), "--trainer.max_steps=-5"], run=False)
    assert str(error.value) == (
        "trainer (Trainer): `max_steps` must be a non-negative integer or -1 (infinite steps). You passed in -5."
    )
