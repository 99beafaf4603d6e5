"""Evaluation: inference modes (whole, slide, multi-scale + flip) and dataset-level metrics."""

from dnlseg.evaluation.inference import Inference, slide_windows
from dnlseg.evaluation.metrics import SegmentationIoU, confusion_summary

__all__ = ["Inference", "SegmentationIoU", "confusion_summary", "slide_windows"]
