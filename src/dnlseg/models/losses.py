"""Cross-entropy with an ignore label, optionally with online hard example mining (OHEM).

OHEM as in the official Cityscapes runs and mmseg's ``OHEMPixelSampler``: keep the labelled pixels whose
predicted probability of their true class is below ``threshold`` (0.7), but at least ``min_kept`` pixels per
image (the threshold is raised to the min_kept-th smallest probability when too few are below it).

Normalisation: the summed pixel losses are divided by the number of labelled (kept) pixels, ``"labelled"``, or by
the number of all pixels of the batch, ignored ones included (they add 0 to the sum), ``"all"``: mmseg's
``CrossEntropyLoss(avg_non_ignore=False)``, its default and what its model zoo was trained with. Under ``"all"`` a
crop with many ignored pixels pulls less on the weights than one that is fully labelled.

Under DDP (training) the loss is the sum over this process's pixels divided by the *mean* count per process: DDP
averages the gradients over the W processes, so the update is that of the mean over the global batch, as on one
device (a plain per-process mean would weight each process's pixels by 1 / its own count). With ``"all"`` every
process counts N * H * W pixels, so that is also mmseg's per-GPU mean averaged by DDP. OHEM still chooses its hard
pixels per process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.models.nonfinite import NONFINITE_ACTIONS, NonFiniteAction

LossNormalization = Literal["labelled", "all"]
LOSS_NORMALIZATIONS = ("labelled", "all")


def distributed_training() -> bool:
    """True in a training forward (gradients on) of a multi-process run."""
    return torch.is_grad_enabled() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_over_processes(count: Tensor) -> Tensor:
    """The mean of ``count`` over all processes (no gradient)."""
    count = count.detach().float().clone()
    dist.all_reduce(count)
    return count / dist.get_world_size()


def mean_loss_terms(losses: dict[str, Tensor], strategy=None) -> dict[str, Tensor]:
    """The loss terms (detached) averaged over all processes with one all-reduce, for logging and for the
    non-finite check: a NaN or inf on any process makes the mean non-finite on every process.

    Args:
        losses: this process's terms, scalars, e.g. ``{"loss", "main_loss", "aux_loss"}``.
        strategy: the Lightning strategy (its ``reduce``); None: this process alone.
    """
    names = list(losses)
    terms = torch.stack([losses[name].detach().float() for name in names])  # (T,), a fresh tensor
    if strategy is not None:
        terms = strategy.reduce(terms, reduce_op="mean")  # one collective for all T terms
    return dict(zip(names, terms.unbind(), strict=True))


@dataclass(frozen=True)
class LossOptions:
    """The training loss (``model.loss``): cross-entropy of the decode head plus ``aux_weight`` times the aux head's.

    Args:
        aux_weight: weight of the auxiliary FCN-head loss (0.4); 0 removes the aux head.
        ohem_threshold: null for plain cross-entropy, else OHEM with this probability threshold (0.7).
        ohem_min_kept: OHEM keeps at least this many pixels per image.
        normalization: "labelled": the loss is the mean over the labelled (kept) pixels; "all": their sum over all
            pixels of the batch, mmseg's ``CrossEntropyLoss(avg_non_ignore=False)`` (module docstring).
        on_nonfinite: a NaN/inf training loss "stop"s the fit (an error naming the step and the loss terms; no
            checkpoint of that state) or "skip"s the batch (no optimiser step; one process only).
    """

    aux_weight: float = 0.4
    ohem_threshold: float | None = None
    ohem_min_kept: int = 100_000
    normalization: LossNormalization = "labelled"
    on_nonfinite: NonFiniteAction = "stop"

    def __post_init__(self) -> None:
        if self.aux_weight < 0:
            raise ValueError(f"model.loss.aux_weight={self.aux_weight} must be >= 0")
        if self.on_nonfinite not in NONFINITE_ACTIONS:
            raise ValueError(f"model.loss.on_nonfinite={self.on_nonfinite!r} must be one of {NONFINITE_ACTIONS}")


class SegmentationLoss(nn.Module):
    """Pixel-wise cross-entropy over the kept (non-ignored, OHEM-selected) pixels, divided by their number or by
    the number of all pixels (module docstring).

    Args:
        ignore_index: label value that contributes no loss (255).
        ohem_threshold: None for plain cross-entropy; else keep pixels with p(true class) < threshold.
        ohem_min_kept: OHEM keeps at least this many pixels per image.
        normalization: "labelled": the mean over the kept pixels; "all": the sum over them divided by all
            N * H * W pixels (mmseg's ``avg_non_ignore=False``).
    """

    def __init__(
        self,
        *,
        ignore_index: int = 255,
        ohem_threshold: float | None = None,
        ohem_min_kept: int = 100_000,
        normalization: LossNormalization = "labelled",
    ):
        super().__init__()
        if ohem_threshold is not None and not 0 < ohem_threshold <= 1:
            raise ValueError(f"model.loss.ohem_threshold={ohem_threshold} must be in (0, 1] or null")
        if ohem_min_kept < 0:
            raise ValueError(f"model.loss.ohem_min_kept={ohem_min_kept} must be >= 0")
        if normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"model.loss.normalization={normalization!r} must be one of {LOSS_NORMALIZATIONS}")
        self.ignore_index = ignore_index
        self.ohem_threshold = ohem_threshold
        self.ohem_min_kept = ohem_min_kept
        self.normalization = normalization

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (N, K, H, W), target (N, H, W) -> scalar loss."""
        distributed = distributed_training()
        if self.ohem_threshold is None and not distributed:
            if self.normalization == "labelled":
                return F.cross_entropy(logits, target, ignore_index=self.ignore_index)
            # mmseg's reduction exactly: ignored pixels are 0 in the mean over all N * H * W
            return F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none").mean()
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")  # (N, H, W)
        if self.ohem_threshold is None:
            keep = target != self.ignore_index
        else:
            keep = self.hard_pixels(logits.detach(), target)
        count = keep.sum() if self.normalization == "labelled" else torch.tensor(keep.numel(), device=keep.device)
        if distributed:
            count = mean_over_processes(count)
        return (pixel_loss * keep).sum() / count.clamp(min=1)

    def hard_pixels(self, logits: Tensor, target: Tensor) -> Tensor:
        """Boolean (N, H, W) mask of the pixels OHEM keeps."""
        valid = target != self.ignore_index
        safe_target = target.masked_fill(~valid, 0)
        prob = torch.softmax(logits.float(), dim=1).gather(1, safe_target[:, None])[:, 0]  # p(true class), (N, H, W)
        threshold = torch.tensor(self.ohem_threshold, device=logits.device)
        valid_prob = prob[valid]
        if self.ohem_min_kept > 0 and valid_prob.numel() > 0:
            # (min_kept + 1)-th smallest probability: strictly below it lie min_kept pixels (mmseg's rule).
            k = min(self.ohem_min_kept * target.shape[0] + 1, valid_prob.numel())
            threshold = torch.maximum(threshold, torch.kthvalue(valid_prob, k).values)
        return valid & (prob < threshold)
