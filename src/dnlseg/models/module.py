"""The LightningModule: loss, optimiser, schedule and metrics around a plain ``SegmentationNetwork``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torch.optim import SGD, Optimizer

from dnlseg.checkpoints.mmseg import MMSEG_KEY, checkpoint_weights, mmseg_iteration, mmseg_state_dict_for
from dnlseg.checkpoints.weight_files import check_state_dict_fits
from dnlseg.errors import CheckpointMismatchError
from dnlseg.evaluation import Inference, SegmentationIoU, confusion_summary
from dnlseg.models.buffers import BufferSnapshot
from dnlseg.models.losses import LossNormalization, SegmentationLoss, mean_loss_terms
from dnlseg.models.network import SegmentationNetwork
from dnlseg.models.nonfinite import NONFINITE_ACTIONS, NonFiniteAction, skip_nonfinite_loss
from dnlseg.models.param_groups import ParamGroup, apply_multipliers, param_groups
from dnlseg.models.schedule import PolyLR, mmseg_total_iters


def default_optimizer(params) -> Optimizer:
    """SGD, momentum 0.9, lr 0.01, weight decay 5e-4 (the Cityscapes recipe)."""
    return SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)


class SegmentationModule(L.LightningModule):
    """Trains a ``SegmentationNetwork`` (encoder + context head + aux head) with cross-entropy.

    Args:
        num_classes: linked from the DataModule by the CLI.
        class_names: linked from the DataModule; names the per-class IoU logs.
        ignore_index: label value without loss or metric (255).
        encoder_name: smp encoder name.
        encoder_weights: None or a local weight file (no downloads): torchvision/smp, timm or mmseg ImageNet layout.
        init_weights: start ``fit`` from the weights of this checkpoint (an mmseg model-zoo ``.pth`` or a dnlseg
            ``.ckpt``; weights only, no optimiser or loop state); it must fit the config's model exactly.
        encoder_depth: 5 (paper); 3 or 4 end a ResNet after layer2/layer3 (small receptive field).
        output_stride: 8 or 16.
        head_channels: width of the context head.
        context: the context block, e.g. ``class_path: dnlseg.context.DisentangledNonLocal2d`` with its
            ``init_args`` (its ``in_channels`` is ``head_channels``); null for the baseline head.
        aux_weight: weight of the auxiliary FCN-head loss (0.4); 0 removes the aux head.
        aux_channels: width of the aux head.
        dropout: Dropout2d before the classifiers.
        align_corners: of the bilinear upsampling of the heads' logits, in training and evaluation (mmseg's
            769x769 Cityscapes configs: true).
        ohem_threshold: null for plain cross-entropy, else OHEM with this probability threshold (0.7).
        ohem_min_kept: OHEM keeps at least this many pixels per image.
        loss_normalization: "labelled": the loss is the mean over the labelled (kept) pixels; "all": their sum
            over all pixels of the batch, mmseg's ``CrossEntropyLoss(avg_non_ignore=False)`` (``dnlseg.models.losses``).
        optimizer: builds the optimiser from the parameters (default SGD lr 0.01, momentum 0.9, wd 5e-4).
        param_groups: lr / weight-decay multipliers by parameter-name pattern, e.g.
            ``[{pattern: "context\\.(query|key)\\.", wd_mult: 0.0}]`` (``dnlseg.models.param_groups``); null: one group.
        lr_scheduler: builds a per-iteration scheduler from the optimiser; null: poly (``poly_power``,
            ``poly_eta_min``) over the run's total optimiser steps, as mmengine's ``PolyLR``.
        poly_power: exponent of the default poly schedule (0.9).
        poly_eta_min: floor of the default poly schedule, reached at the last step (mmseg 1e-4).
        inference: how validation, test and predict run the network on a full image: ``mode`` whole or
            slide (``crop_size``, ``stride``), ``scales`` and ``flip`` for multi-scale + flip, ``base_size``;
            null: the whole image at its own size. Scores are compared at the label's resolution.
        on_nonfinite_loss: a NaN/inf training loss "stop"s the fit (an error naming the step and the loss
            terms; no checkpoint of that state) or "skip"s the batch (no optimiser step; one process only).
        channels_last: keep the network's weights and its input images in the channels-last (NHWC) memory
            format, which tensor-core convolutions (CUDA, with ``trainer.precision: bf16-mixed`` or ``16-mixed``)
            run without transposes. Outputs are the same as with the default layout, to rounding.
        compile: ``torch.compile`` the network's forward (``nn.Module.compile``: parameters and checkpoint keys
            are unchanged). The first steps are slow while it compiles, and each new input size compiles again.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        ignore_index: int = 255,
        encoder_name: str = "resnet50",
        encoder_weights: str | Path | None = None,
        init_weights: str | Path | None = None,
        encoder_depth: int = 5,
        output_stride: int = 8,
        head_channels: int = 512,
        context: Callable[[int], nn.Module] | None = None,
        aux_weight: float = 0.4,
        aux_channels: int = 256,
        dropout: float = 0.1,
        align_corners: bool = False,
        ohem_threshold: float | None = None,
        ohem_min_kept: int = 100_000,
        loss_normalization: LossNormalization = "labelled",
        optimizer: OptimizerCallable = default_optimizer,
        param_groups: list[ParamGroup] | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        poly_power: float = 0.9,
        poly_eta_min: float = 0.0,
        inference: Inference | None = None,
        on_nonfinite_loss: NonFiniteAction = "stop",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["context", "optimizer", "lr_scheduler"])
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        if aux_weight < 0:
            raise ValueError(f"aux_weight={aux_weight} must be >= 0")
        if on_nonfinite_loss not in NONFINITE_ACTIONS:
            raise ValueError(f"on_nonfinite_loss={on_nonfinite_loss!r} must be one of {NONFINITE_ACTIONS}")
        self.on_nonfinite_loss = on_nonfinite_loss
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.network = SegmentationNetwork(
            num_classes,
            encoder_name,
            encoder_weights,
            output_stride,
            head_channels,
            context,
            aux_channels if aux_weight > 0 else 0,
            dropout,
            encoder_depth,
            align_corners,
        )
        if init_weights is not None:  # before the memory format and compile: plain state_dict keys
            self.load_state_dict(checkpoint_weights(self, Path(init_weights)))
        self.channels_last = channels_last
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        if compile:
            self.network.compile()  # compiles the forward in place: state_dict keys stay ``network.*``
        self.criterion = SegmentationLoss(ignore_index, ohem_threshold, ohem_min_kept, loss_normalization)
        self.aux_weight = aux_weight
        self.optimizer_factory = optimizer
        self.param_group_rules = list(param_groups or [])
        self.lr_scheduler_factory = lr_scheduler
        self.poly_power = poly_power
        self.poly_eta_min = poly_eta_min
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
        """{"loss": total, "main_loss": decode head, "aux_loss": aux head (when present)} for a training batch."""
        masks = batch["mask"]
        out = self.network(self.to_memory_format(batch["image"]))
        size = masks.shape[-2:]
        losses = {"main_loss": self.criterion(self.network.upsample(out.logits, size), masks)}
        losses["loss"] = losses["main_loss"]
        if out.aux_logits is not None:
            losses["aux_loss"] = self.criterion(self.network.upsample(out.aux_logits, size), masks)
            losses["loss"] = losses["main_loss"] + self.aux_weight * losses["aux_loss"]
        return losses

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
