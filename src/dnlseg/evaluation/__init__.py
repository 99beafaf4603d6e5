"""Evaluation: dataset-level segmentation metrics and the gradient-separation measurement."""

from dnlseg.evaluation.gradient_separation import cross_sensitivity, unary_logit_gradient
from dnlseg.evaluation.metrics import SegmentationIoU, confusion_summary

__all__ = ["SegmentationIoU", "confusion_summary", "cross_sensitivity", "unary_logit_gradient"]
