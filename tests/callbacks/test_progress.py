"""progress: the training bar counts steps (after a resume too), the model summary has no FLOPs column of zeros,
and the CLI uses both unless the config turns them off."""

import logging
import re

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.model_summary import summarize

from dnlseg.callbacks import ParameterSummary, StepProgressBar
from dnlseg.data import SyntheticDataModule
from dnlseg.data.loaders import LoaderOptions
from tests.helpers import tiny_module
from tests.recipes import ROOT

SYNTHETIC = str(ROOT / "configs/synthetic/dnl.yaml")


def fit(tmp_path, max_steps: int, ckpt_path=None) -> L.Trainer:
    data = SyntheticDataModule(
        num_train=6, num_val=2, image_size=32, loader=LoaderOptions(batch_size=2, num_workers=0)
    )  # 3 steps an epoch
    trainer = L.Trainer(
        accelerator="cpu", max_steps=max_steps, callbacks=[StepProgressBar()], logger=False,
        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(tiny_module(num_classes=data.num_classes), data, ckpt_path=ckpt_path)
    return trainer


def bar_lines(output: str) -> list[str]:
    """The training bar as it was drawn: ``step <n>/<total> ...`` each time."""
    return [line.strip() for line in re.split(r"[\r\n]", output) if line.strip().startswith("step ")]


@pytest.mark.slow  # two fits (33 s on the shared 2-core CPU)
def test_the_training_bar_counts_steps_across_epochs_and_from_the_step_a_resumed_run_is_at(tmp_path, capsys):
    trainer = fit(tmp_path, max_steps=4)  # two epochs of 3 steps
    out = capsys.readouterr().out
    counts = [line.split()[1] for line in bar_lines(out)]
    assert counts[0] == "0/4" and counts[-1] == "4/4" and "3/4" in counts
    assert "Epoch" not in out
    trainer.save_checkpoint(tmp_path / "step4.ckpt")
    fit(tmp_path, max_steps=7, ckpt_path=tmp_path / "step4.ckpt")
    counts = [line.split()[1] for line in bar_lines(capsys.readouterr().out)]
    assert counts[0] == "4/7" and counts[-1] == "7/7"


def test_a_fit_by_epochs_keeps_lightnings_bar(tmp_path, capsys):
    data = SyntheticDataModule(num_train=4, num_val=2, image_size=32, loader=LoaderOptions(batch_size=2, num_workers=0))
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, callbacks=[StepProgressBar()], logger=False, enable_checkpointing=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(tiny_module(num_classes=data.num_classes), data)
    out = capsys.readouterr().out
    assert "Epoch 0: 100%" in out and bar_lines(out) == []


def test_the_summary_has_no_flops(caplog):
    module = tiny_module()
    summary = summarize(module, max_depth=1)
    caplog.set_level(logging.INFO)
    ParameterSummary.summarize(
        summary._get_summary_data(), summary.total_parameters, summary.trainable_parameters, summary.model_size,
        summary.total_training_modes, total_flops=0,
    )  # fmt: skip
    (text,) = [r.getMessage() for r in caplog.records]
    assert "Total params" in text and "network" in text and "Params" in text
    assert "flops" not in text.lower()


@pytest.mark.parametrize(
    ("overrides", "bar", "summary"),
    [
        ([], StepProgressBar, ParameterSummary),
        (["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"], None, None),
        (["--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar"], TQDMProgressBar, ParameterSummary),
    ],
    ids=["defaults", "turned-off", "own-bar"],
)
def test_the_cli_uses_the_step_bar_and_the_summary_unless_the_config_says_otherwise(overrides, bar, summary):
    from dnlseg.cli.lightning_cli import run_cli

    trainer = run_cli(["-c", SYNTHETIC, *overrides], run=False).trainer
    bars = [type(c) for c in trainer.callbacks if isinstance(c, ProgressBar)]
    summaries = [type(c) for c in trainer.callbacks if isinstance(c, ModelSummary)]
    assert bars == ([bar] if bar else []) and RichProgressBar not in bars
    assert summaries == ([summary] if summary else [])
