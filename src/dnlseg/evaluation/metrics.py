"""Dataset-level segmentation metrics from one confusion matrix, as the Cityscapes evaluator computes them.

IoU_c    = TP_c / (TP_c + FP_c + FN_c)       NaN for a class absent from both prediction and labels
mIoU     = mean of IoU_c over the classes that are not NaN
pixel accuracy = sum_c TP_c / labelled pixels
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex


class SegmentationIoU(MulticlassJaccardIndex):
    """torchmetrics' per-class IoU over the whole dataset, its state one (classes x classes) confusion matrix.

    ``update`` counts with ``torch.bincount`` directly: torchmetrics' own update switches, under
    ``torch.use_deterministic_algorithms``, to a fallback that builds a (pixels x classes^2) tensor -- gigabytes
    for one 1024x2048 Cityscapes image. Integer counting is exact, so this is deterministic as it is.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        super().__init__(num_classes, average="none", ignore_index=ignore_index, zero_division=float("nan"))

    def update(self, preds: Tensor, target: Tensor) -> None:
        """preds, target: (N, H, W) integer class maps; target may hold ``ignore_index``."""
        k = self.num_classes
        preds, target = preds.flatten(), target.flatten()
        labelled = target != self.ignore_index
        preds, target = preds[labelled], target[labelled]
        if target.numel() and (target.min() < 0 or target.max() >= k):
            raise ValueError(f"label values must be in [0, {k}) or {self.ignore_index}; found {target.unique()}")
        counts = torch.bincount(target * k + preds, minlength=k * k)  # row: label, column: prediction
        self.confmat += counts.reshape(k, k).to(self.confmat.dtype)


def confusion_summary(confmat: Tensor, class_names: list[str]) -> dict[str, Tensor]:
    """{"mIoU", "pixel_acc", "IoU/<class name>" ...} from a confusion matrix (rows: label, columns: prediction)."""
    confmat = confmat.double()
    tp = confmat.diagonal()
    union = confmat.sum(0) + confmat.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    summary = {"mIoU": iou.nanmean(), "pixel_acc": tp.sum() / confmat.sum().clamp(min=1)}
    summary.update({f"IoU/{name}": value for name, value in zip(class_names, iou, strict=True)})
    return summary
