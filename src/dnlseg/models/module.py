"""The LightningModule: loss, optimiser, schedule and metrics around a plain ``SegmentationNetwork``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.optim import SGD, Optimizer

from dnlseg.checkpoints.hyperparameters import plain
from dnlseg.checkpoints.mmseg import MMSEG_KEY, checkpoint_weights, mmseg_iteration, mmseg_state_dict_for
from dnlseg.checkpoints.weight_files import check_state_dict_fits
from dnlseg.errors import CheckpointMismatchError
from dnlseg.evaluation import Inference, SegmentationIoU, confusion_summary
from dnlseg.models.buffers import BufferSnapshot
from dnlseg.models.losses import LossOptions, SegmentationLoss, mean_loss_terms
from dnlseg.models.network import NetworkOptions, SegmentationNetwork
from dnlseg.models.nonfinite import skip_nonfinite_loss
from dnlseg.models.param_groups import apply_multipliers, param_groups
from dnlseg.models.schedule import OptimizationOptions, PolyLR, mmseg_total_iters


def default_optimizer(params) -> Optimizer:
    """SGD, momentum 0.9, lr 0.01, weight decay 5e-4 (the Cityscapes recipe)."""
    return SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


@dataclass(frozen=True)
class RuntimeOptions:
    """How the network runs (``model.runtime``); outputs and checkpoint keys are the same either way.

    Args:
        channels_last: keep the network's weights and its input images in the channels-last (NHWC) memory
            format, which tensor-core convolutions (CUDA, with ``trainer.precision: bf16-mixed`` or ``16-mixed``)
            run without transposes. Outputs are the same as with the default layout, to rounding.
        compile: ``torch.compile`` the network's forward (``nn.Module.compile``: parameters and checkpoint keys
            are unchanged). The first steps are slow while it compiles, and each new input size compiles again.
    """

    channels_last: bool = False
    compile: bool = False


class SegmentationModule(L.LightningModule):
    """Trains a ``SegmentationNetwork`` (encoder + context head + aux head) with cross-entropy.

    Each group of options is a dataclass with its own documented fields, overridden on the command line as
    ``--model.<group>.<option>`` (e.g. ``--model.network.head_channels=256``, ``--model.loss.aux_weight=0``).

    Args:
        num_classes: linked from the DataModule by the CLI.
        class_names: linked from the DataModule; names the per-class IoU logs.
        ignore_index: label value without loss or metric (255).
        network: encoder, context head and aux head (``NetworkOptions``).
        loss: the training loss: aux weight, OHEM, normalisation, what a NaN/inf loss does (``LossOptions``).
        optimizer: builds the optimiser from the parameters (default SGD lr 0.01, momentum 0.9, wd 5e-4).
        lr_scheduler: builds a per-iteration scheduler from the optimiser; null: poly (``optimization.poly_power``,
            ``optimization.poly_eta_min``) over the run's total optimiser steps, as mmengine's ``PolyLR``.
        optimization: per-parameter-group lr / weight-decay multipliers and the default poly schedule
            (``OptimizationOptions``).
        inference: how validation, test and predict run the network on a full image: ``mode`` whole or
            slide (``crop_size``, ``stride``), ``scales`` and ``flip`` for multi-scale + flip, ``base_size``;
            null: the whole image at its own size. Scores are compared at the label's resolution.
        init_weights: start ``fit`` from the weights of this checkpoint (an mmseg model-zoo ``.pth`` or a dnlseg
            ``.ckpt``; weights only, no optimiser or loop state); it must fit the config's model exactly.
        runtime: memory format and ``torch.compile`` (``RuntimeOptions``).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        network: NetworkOptions = NetworkOptions(),
        loss: LossOptions = LossOptions(),
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        optimization: OptimizationOptions = OptimizationOptions(),
        inference: Inference | None = None,
        init_weights: str | Path | None = None,
        runtime: RuntimeOptions = RuntimeOptions(),
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # Built by LightningCLI the groups are recorded as the config gives them; built in Python, as the same
        # plain values, so that a checkpoint holds no pickled objects (``torch.load(weights_only=True)`` reads it).
        self.hparams.update({name: plain(value) for name, value in self.hparams.items()})
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.on_nonfinite_loss = loss.on_nonfinite
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        if loss.aux_weight == 0:  # no aux loss: no aux head
            network = dataclasses.replace(network, aux_channels=0)
        self.network = SegmentationNetwork.from_options(network, num_classes=num_classes)
        if init_weights is not None:  # before the memory format and compile: plain state_dict keys
            self.load_state_dict(checkpoint_weights(self, Path(init_weights)))
        self.channels_last = runtime.channels_last
        if runtime.channels_last:
            self.network.to(memory_format=torch.channels_last)
        if runtime.compile:
            self.network.compile()  # compiles the forward in place: state_dict keys stay ``network.*``
        self.criterion = SegmentationLoss(
            ignore_index=ignore_index,
            ohem_threshold=loss.ohem_threshold,
            ohem_min_kept=loss.ohem_min_kept,
            normalization=loss.normalization,
        )
        self.aux_weight = loss.aux_weight
        self.optimizer_factory = optimizer
        self.param_group_rules = list(optimization.param_groups or [])
        self.lr_scheduler_factory = lr_scheduler
        self.poly_power = optimization.poly_power
        self.poly_eta_min = optimization.poly_eta_min
        self.inference = inference if inference is not None else Inference()
        self.val_iou = SegmentationIoU(num_classes, ignore_index)
        self.test_iou = SegmentationIoU(num_classes, ignore_index)
        # The training step of the weights held outside a fit (``evaluated_step``): set by ``on_load_checkpoint``
        # and at the end of a fit.
        self.weights_step: int | None = None
        self.weights_step_source = "no checkpoint loaded: the initial weights, shown at step 0"
        self._fit_loop_step: int | None = None  # the fit loop's logging step while an evaluation borrows it

    def forward(self, images: Tensor) -> Tensor:
        return self.network(self.to_memory_format(images)).logits

    def to_memory_format(self, images: Tensor) -> Tensor:
        """Images (N, 3, H, W) in the network's memory format: channels-last with ``channels_last``, else as given."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def losses(self, batch: dict) -> dict[str, Tensor]:
        """{"loss": total, "main_loss": decode head, "aux_loss": aux head (when present), "<side>_loss": each extra
        classifier of the decode head (DANet's "pam", "cam")} for a training batch; the total weighs the aux loss
        by ``loss.aux_weight`` and each side loss by the head's ``side_loss_weights``."""
        masks = batch["mask"]
        out = self.network(self.to_memory_format(batch["image"]))
        size = masks.shape[-2:]
        losses = {"main_loss": self.criterion(self.network.upsample(out.logits, size), masks)}
        total = losses["main_loss"]
        if out.aux_logits is not None:
            losses["aux_loss"] = self.criterion(self.network.upsample(out.aux_logits, size), masks)
            total = total + self.aux_weight * losses["aux_loss"]
        weights = self.network.side_loss_weights
        for name, logits in out.side_logits.items():
            losses[f"{name}_loss"] = self.criterion(self.network.upsample(logits, size), masks)
            total = total + weights[name] * losses[f"{name}_loss"]
        return {"loss": total, **losses}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        # A skipped batch must not leave its NaN in the BatchNorm running statistics either.
        buffers = BufferSnapshot(self) if self.on_nonfinite_loss == "skip" else None
        losses = self.losses(batch)
        # The terms of the global batch: one all-reduce per step under DDP for the check and the logs alike.
        global_terms = mean_loss_terms(losses, self.trainer.strategy)
        if skip_nonfinite_loss(global_terms, self.trainer.global_step, self.on_nonfinite_loss):
            if buffers is not None:  # on_nonfinite_loss == "skip"
                buffers.restore()
            return None  # Lightning makes no optimiser step
        batch_size = batch["image"].shape[0]
        for name, value in global_terms.items():  # already averaged over the processes: no sync_dist
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        return losses["loss"]

    @property
    def evaluated_step(self) -> int:
        """The training step of the weights being evaluated, the one place that knows it: the trainer's
        ``global_step`` during a fit; otherwise the loaded checkpoint's (its ``global_step``, or an mmseg file's
        ``meta.iter``) or the step a fit ended at, 0 when there is none (``weights_step_source`` says which)."""
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            return self.trainer.global_step
        return self.weights_step or 0

    def on_fit_end(self) -> None:
        self.weights_step = self.trainer.global_step  # e.g. for ``trainer.validate(model)`` after the fit
        self.weights_step_source = "global_step at the end of the fit that trained the weights"

    def on_validation_start(self) -> None:
        self.log_at_evaluated_step()

    def on_test_start(self) -> None:
        self.log_at_evaluated_step()

    def on_validation_end(self) -> None:
        self.restore_logging_step()

    def on_test_end(self) -> None:
        self.restore_logging_step()

    def log_at_evaluated_step(self) -> None:
        """Outside a fit, log this evaluation's metrics at ``evaluated_step`` instead of step 0.

        Lightning logs epoch-end metrics at ``fit_loop.epoch_loop._batches_that_stepped`` (a private attribute:
        ``tests/models/test_module.py`` fails clearly when Lightning renames it), which a validate or test that
        does not fit leaves at 0; it is lent the checkpoint's step for the evaluation and given back after it.
        """
        loop = self.trainer.fit_loop.epoch_loop
        if self.trainer.state.fn == TrainerFn.FITTING or not hasattr(loop, "_batches_that_stepped"):
            return  # a Lightning without it: step 0, as before
        self._fit_loop_step = loop._batches_that_stepped
        loop._batches_that_stepped = self.evaluated_step

    def restore_logging_step(self) -> None:
        if self._fit_loop_step is not None:
            self.trainer.fit_loop.epoch_loop._batches_that_stepped = self._fit_loop_step
            self._fit_loop_step = None

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, "val", self.val_iou)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.evaluation_step(batch, "test", self.test_iou)

    def evaluation_step(self, batch: dict, stage: str, metric) -> None:
        masks = batch["mask"]  # (N, H, W) at the original label resolution
        logits = self.inference(self, batch["image"], masks.shape[-2:], self.network.align_corners)  # (N, K, H, W)
        self.log(f"{stage}/loss", self.criterion(logits, masks), batch_size=masks.shape[0], sync_dist=True)
        metric.update(logits.argmax(dim=1), masks)

    def on_validation_epoch_end(self) -> None:
        self.log_confusion_summary("val", self.val_iou)

    def on_test_epoch_end(self) -> None:
        self.log_confusion_summary("test", self.test_iou)

    def log_confusion_summary(self, stage: str, metric) -> None:
        with metric.sync_context():  # the dataset-level confusion matrix summed over all ranks
            summary = confusion_summary(metric.confmat, self.class_names)
        metric.reset()
        # The same values on every rank: a max over the ranks keeps them exact (a mean could move the last bit) and
        # tells Lightning they are synchronised (it warns about every epoch-level value logged without sync_dist).
        synced: dict[str, Any] = {"sync_dist": True, "reduce_fx": "max"}
        self.log(f"{stage}/mIoU", summary.pop("mIoU").float(), prog_bar=True, **synced)
        self.log_dict({f"{stage}/{k}": v.float() for k, v in summary.items()}, **synced)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """{"name": the batch's names, "prediction": (N, H, W) class ids at the input images' size}."""
        images = batch["image"]
        return {
            "name": batch.get("name"),
            "prediction": self.inference(self, images, None, self.network.align_corners).argmax(dim=1),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Before Lightning loads ``checkpoint["state_dict"]``: map an mmseg file's keys, check every shape, and
        record the training step of the weights (``evaluated_step``)."""
        if MMSEG_KEY in checkpoint:  # read by AtomicCheckpointIO from an mmseg model-zoo file
            source = checkpoint[MMSEG_KEY]["path"]
            if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
                raise CheckpointMismatchError(
                    f"--ckpt_path {source} is an mmsegmentation checkpoint: it holds weights but no dnlseg training "
                    f"state to resume; start a fit from its weights with --model.init_weights={source}"
                )
            checkpoint["state_dict"] = mmseg_state_dict_for(self, checkpoint["state_dict"], source)
            self.weights_step = mmseg_iteration(checkpoint[MMSEG_KEY].get("meta"))
            self.weights_step_source = (
                "meta.iter of the mmsegmentation checkpoint"
                if self.weights_step is not None
                else "the mmsegmentation checkpoint records no iteration (meta.iter): shown at step 0"
            )
        else:
            self.weights_step = checkpoint.get("global_step")
            self.weights_step_source = (
                "global_step of the checkpoint"
                if self.weights_step is not None
                else "the checkpoint records no global_step: shown at step 0"
            )
        check_state_dict_fits(self, checkpoint["state_dict"])  # names every differing shape, before loading

    def configure_optimizers(self):
        params = param_groups(self, self.param_group_rules) if self.param_group_rules else self.parameters()
        optimizer = apply_multipliers(self.optimizer_factory(params))
        if self.lr_scheduler_factory is not None:
            scheduler = self.lr_scheduler_factory(optimizer)
        else:  # poly to a floor, stepped every iteration
            total_iters = mmseg_total_iters(int(self.trainer.estimated_stepping_batches))
            scheduler = PolyLR(optimizer, total_iters, power=self.poly_power, eta_min=self.poly_eta_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
