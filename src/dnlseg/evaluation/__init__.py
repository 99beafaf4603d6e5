"""Evaluation: inference modes (whole, slide, multi-scale + flip), dataset-level metrics, gradient separation,
attention consistency and attention figures."""

from dnlseg.data.transforms import unnormalize
from dnlseg.evaluation.attention_consistency import (
    boundary_band,
    labels_on_grid,
    pairwise_category_consistency,
    unary_boundary_consistency,
)
from dnlseg.evaluation.attention_figure import Query, attention_figure, select_queries
from dnlseg.evaluation.gradient_separation import cross_sensitivity, unary_logit_gradient
from dnlseg.evaluation.inference import Inference, slide_windows
from dnlseg.evaluation.metrics import SegmentationIoU, confusion_summary

__all__ = [
    "Inference",
    "Query",
    "SegmentationIoU",
    "attention_figure",
    "boundary_band",
    "confusion_summary",
    "cross_sensitivity",
    "labels_on_grid",
    "pairwise_category_consistency",
    "select_queries",
    "slide_windows",
    "unary_boundary_consistency",
    "unary_logit_gradient",
    "unnormalize",
]
