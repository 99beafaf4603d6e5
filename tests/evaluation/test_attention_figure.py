"""Query selection from labels and the attention figure."""

import numpy as np
import torch

from dnlseg.context import AttentionMaps
from dnlseg.evaluation import Query, attention_figure, select_queries, unnormalize

# 6 x 8 grid: class 2 on the left half, class 5 on the right half, class 7 in a 2 x 2 corner, void top row.
LABELS = torch.tensor([[255] * 8] + [[2, 2, 2, 2, 5, 5, 5, 5]] * 3 + [[2, 2, 2, 2, 5, 5, 7, 7]] * 2)


def test_queries_are_the_deepest_cell_of_each_class_by_area_then_a_boundary_cell():
    queries = select_queries(LABELS)
    assert [(q.label, q.kind) for q in queries] == [(2, "interior"), (5, "interior"), (7, "interior"), (2, "boundary")]
    for q in queries:
        assert LABELS[q.row, q.col] == q.label
    assert queries[0] == Query(2, 1, 2, "interior")  # 2 cells from the void row, the edge and class 5
    boundary = queries[-1]
    assert LABELS[boundary.row, boundary.col + 1] != boundary.label or LABELS[boundary.row + 1, boundary.col] != 2


def test_query_selection_is_deterministic_and_respects_max_classes():
    assert select_queries(LABELS) == select_queries(LABELS.clone())
    assert [q.kind for q in select_queries(LABELS, max_classes=1)] == ["interior", "boundary"]
    assert [q.kind for q in select_queries(torch.full((4, 4), 3))] == ["interior"]  # no boundary


def test_unnormalize_inverts_imagenet_normalisation():
    rgb = torch.rand(3, 4, 5)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    np.testing.assert_allclose(unnormalize((rgb - mean) / std), rgb.permute(1, 2, 0).numpy(), atol=1e-6)


def test_figure_has_an_image_panel_a_panel_per_query_and_a_unary_panel():
    P = LABELS.numel()
    maps = AttentionMaps(torch.zeros(1, P, P), torch.randn(1, P, P), torch.randn(1, 1, P), (6, 8), (6, 8))
    queries = select_queries(LABELS)
    fig = attention_figure(
        np.zeros((24, 32, 3)), LABELS.repeat_interleave(4, 0).repeat_interleave(4, 1), maps, 0, queries
    )
    assert len(fig.axes) == 1 + len(queries) + 1
    no_unary = AttentionMaps(maps.weights, maps.pairwise_logits, None, (6, 8), (6, 8))
    assert len(attention_figure(np.zeros((24, 32, 3)), torch.zeros(24, 32), no_unary, 0, queries).axes) == 5
