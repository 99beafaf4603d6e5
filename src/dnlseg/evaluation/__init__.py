"""Evaluation: inference modes (whole, slide, multi-scale + flip), dataset-level metrics, gradient separation."""

from dnlseg.evaluation.gradient_separation import cross_sensitivity, unary_logit_gradient
from dnlseg.evaluation.inference import Inference, slide_windows
from dnlseg.evaluation.metrics import SegmentationIoU, confusion_summary

__all__ = [
    "Inference",
    "SegmentationIoU",
    "confusion_summary",
    "cross_sensitivity",
    "slide_windows",
    "unary_logit_gradient",
]
