"""Analyses of trained context blocks: gradient separation of the unary and pairwise terms, attention consistency,
attention figures; ``tensorboard_scalars`` reads back the scalars a run logged."""

from dnlseg.analysis.attention_consistency import (
    boundary_band,
    labels_on_grid,
    pairwise_category_consistency,
    unary_boundary_consistency,
)
from dnlseg.analysis.attention_figure import Query, attention_figure, select_queries
from dnlseg.analysis.gradient_separation import cross_sensitivity, unary_logit_gradient

__all__ = [
    "Query",
    "attention_figure",
    "boundary_band",
    "cross_sensitivity",
    "labels_on_grid",
    "pairwise_category_consistency",
    "select_queries",
    "unary_boundary_consistency",
    "unary_logit_gradient",
]
