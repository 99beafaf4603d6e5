"""What a fit prints while it runs: a progress bar that counts steps, a model summary without a column of zeros.

``StepProgressBar``: Lightning's bars count the batches of an epoch under the title ``Epoch <e>/<max_epochs - 1>``.
A fit by ``max_steps`` (the recipes; ``max_epochs`` -1) shows ``Epoch 0/-2``, and after a resume the count starts
from the batch the epoch was at while the total is the epoch's (``60/5``). Here the training bar counts optimizer
steps, from the run's global step (after a resume too) to ``max_steps``, across epochs: ``step 120/800``. A fit by
epochs keeps Lightning's per-epoch bar. Built on tqdm, which comes with Lightning (Rich, Lightning's other bar,
is installed only by the parity extra), so every user sees the same bar.

``ParameterSummary``: Lightning's model summary counts FLOPs only for a module with an ``example_input_array``;
dnlseg's has none (the input size is the data's), so Lightning prints a FLOPs column of zeros and "Total FLOPs: 0".
This summary is Lightning's without them.

``display_callbacks``: the ``dnlseg`` CLI adds both in place of Lightning's defaults to every trainer it builds,
unless the config turns them off (``trainer.enable_progress_bar`` / ``enable_model_summary: false``) or names a
bar or summary of its own. Not in the configs' ``callbacks``: Lightning refuses a progress bar callback together
with ``--trainer.enable_progress_bar=false``.
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
from lightning.pytorch.utilities.rank_zero import rank_zero_info

FLOPS_COLUMN = "FLOPs"


class StepProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` (same arguments) whose training bar counts steps in a fit by ``max_steps``:
    ``step 120/800 |███▏      | [00:30<02:50, 4.00it/s, train/loss=0.512]`` (module docstring)."""

    STEP_BAR_FORMAT = "{desc} {n_fmt}/{total_fmt} |{bar}| [{elapsed}<{remaining}, {rate_noinv_fmt}{postfix}]"

    @staticmethod
    def counts_steps(trainer: L.Trainer) -> bool:
        return trainer.max_steps > 0

    def init_train_tqdm(self) -> Tqdm:
        if not self.counts_steps(self.trainer):
            return super().init_train_tqdm()
        return Tqdm(
            desc="step",
            initial=self.trainer.global_step,  # a resumed run: its rate and time left count from here
            total=self.trainer.max_steps,
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.STEP_BAR_FORMAT,
        )

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.counts_steps(trainer):
            super().on_train_epoch_start(trainer, *args)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not self.counts_steps(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar, step = self.train_progress_bar, trainer.global_step
        if self._should_update(step, bar.total) and not bar.disable:
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar


class ParameterSummary(ModelSummary):
    """``ModelSummary`` (same arguments) without the FLOPs column and total (module docstring)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [column for column in summary_data if column[0] != FLOPS_COLUMN]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
        )
        lines = table.splitlines()
        rank_zero_info("\n" + "\n".join(line for line in lines if not line.endswith("Total Flops")))


def display_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """``StepProgressBar`` and ``ParameterSummary`` for a trainer built from ``trainer_config`` (its init arguments,
    instantiated), each unless the config turns it off or brings its own (module docstring). With the summary
    added, ``trainer_config`` says ``enable_model_summary=False``: Lightning would otherwise announce that it skips
    its own default summary."""
    configured = trainer_config.get("callbacks") or []
    configured = configured if isinstance(configured, list) else [configured]
    added: list[Callback] = []
    if trainer_config.get("enable_progress_bar") is not False and not any(
        isinstance(c, ProgressBar) for c in configured
    ):
        added.append(StepProgressBar())
    if trainer_config.get("enable_model_summary") is not False and not any(
        isinstance(c, ModelSummary) for c in configured
    ):
        added.append(ParameterSummary())
        trainer_config["enable_model_summary"] = False
    return added
