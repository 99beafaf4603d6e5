"""Cross-entropy with an ignore label, optionally with online hard example mining (OHEM).

OHEM as in the official Cityscapes runs and mmseg's ``OHEMPixelSampler``: keep the labelled pixels whose
predicted probability of their true class is below ``threshold`` (0.7), but at least ``min_kept`` pixels per
image (the threshold is raised to the min_kept-th smallest probability when too few are below it).

Under DDP (training) the loss is the sum over this process's kept pixels divided by the *mean* number of
kept pixels per process: DDP averages the gradients over the W processes, so the update is that of the
mean over all kept pixels of the global batch, as on one device (a plain per-process mean would weight
each process's pixels by 1 / its own count). OHEM still chooses its hard pixels per process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


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


class SegmentationLoss(nn.Module):
    """Pixel-wise cross-entropy, mean over the kept (non-ignored, OHEM-selected) pixels.

    Args:
        ignore_index: label value that contributes no loss (255).
        ohem_threshold: None for plain cross-entropy; else keep pixels with p(true class) < threshold.
        ohem_min_kept: OHEM keeps at least this many pixels per image.
    """

    def __init__(self, ignore_index: int = 255, ohem_threshold: float | None = None, ohem_min_kept: int = 100_000):
        super().__init__()
        if ohem_threshold is not None and not 0 < ohem_threshold <= 1:
            raise ValueError(f"ohem_threshold={ohem_threshold} must be in (0, 1] or null")
        if ohem_min_kept < 0:
            raise ValueError(f"ohem_min_kept={ohem_min_kept} must be >= 0")
        self.ignore_index = ignore_index
        self.ohem_threshold = ohem_threshold
        self.ohem_min_kept = ohem_min_kept

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (N, K, H, W), target (N, H, W) -> scalar loss."""
        distributed = distributed_training()
        if self.ohem_threshold is None and not distributed:
            return F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        pixel_loss = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")  # (N, H, W)
        if self.ohem_threshold is None:
            keep = target != self.ignore_index
        else:
            keep = self.hard_pixels(logits.detach(), target)
        count = keep.sum()
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
