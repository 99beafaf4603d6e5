"""Query selection from labels and the attention figure: a grid that reads at TensorBoard's card size."""

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

from dnlseg.analysis import Query, attention_figure, select_queries
from dnlseg.analysis.attention_figure import CAPTION, COLORMAP, COLOUR_BAR_LABEL, colour_scale, grid_shape, term_maps
from dnlseg.data.transforms import unnormalize
from tests.helpers import captured_from_logits

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


def figure(labels=LABELS, unary=True, palette=None, class_names=None, scale=4, pairwise_logits=None):
    P = labels.numel()
    h, w = labels.shape
    pairwise = torch.randn(1, P, P) if pairwise_logits is None else pairwise_logits
    maps = captured_from_logits(pairwise, torch.randn(1, 1, P) if unary else None, (h, w), (h, w))
    queries = select_queries(labels)
    mask = labels.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    image = np.zeros((*mask.shape, 3))
    return attention_figure(image, mask, maps, 0, queries, class_names, 255, "block, step 1, image 0", palette), queries


def drawn_texts(fig):
    """{text: its window extent} of every non-empty title, legend entry and caption, after drawing."""
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for ax in fig.axes for t in (ax.title,)] + list(fig.texts)
    texts += [
        t for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()] for t in legend.texts
    ]
    return {t.get_text(): t.get_window_extent(renderer) for t in texts if t.get_text()}


def test_figure_has_an_image_panel_a_panel_per_query_and_a_unary_panel():
    fig, queries = figure()
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 1 + len(queries) + 1
    no_unary, _ = figure(unary=False)
    assert len([ax for ax in no_unary.axes if ax.images]) == 1 + len(queries)


def test_panels_form_a_grid_not_a_strip_so_the_figure_reads_at_tensorboard_card_width():
    assert grid_shape(5, aspect=1.0) == (3, 2) and grid_shape(6, aspect=2.0) == (3, 2)
    fig, _ = figure()
    width, height = fig.get_size_inches()
    assert width * 100 <= 480 and height > width  # 460 px wide at 100 dpi: TensorBoard shrinks it only ~0.7x
    rows = {round(ax.get_position().y0, 2) for ax in fig.axes if ax.images}
    assert len(rows) >= 2


def test_titles_legend_and_caption_do_not_overlap():
    fig, _ = figure(class_names=["c0", "c1", "a long class name", "c3", "c4", "c5", "c6", "c7"])
    extents = drawn_texts(fig)
    names = list(extents)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not extents[a].overlaps(extents[b]), (a, b)


def test_legend_names_every_ground_truth_class_in_its_palette_colour_and_one_caption_explains_peak():
    palette = [(i * 20, 0, 0) for i in range(8)]
    names = [f"class{i}" for i in range(8)]
    fig, _ = figure(palette=palette, class_names=names)
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends
    assert [t.get_text() for t in legend.texts] == ["class2", "class5", "class7"]  # the classes in LABELS
    colours = [tuple(np.round(np.asarray(h.get_facecolor()[:3]) * 255).astype(int)) for h in legend.legend_handles]
    assert colours == [palette[2], palette[5], palette[7]]
    texts = list(drawn_texts(fig))
    assert sum("uniform" in t for t in texts) == 1  # "peak Nx uniform" explained once, in the caption
    assert any(t.replace("\n", " ") == CAPTION for t in texts)
    assert all("uniform" not in ax.title.get_text() for ax in fig.axes)


def test_query_markers_differ_in_shape_and_colour():
    fig, queries = figure()
    image_panel = next(ax for ax in fig.axes if ax.images)
    markers = [(line.get_marker(), line.get_markerfacecolor()) for line in image_panel.lines]
    assert len(markers) == len(queries) and len(set(m for m, _ in markers)) == len(queries)
    assert len({c for _, c in markers}) == len(queries)


@pytest.mark.parametrize("shift", [0, 1])
def test_the_boundary_query_keeps_clear_of_the_interior_queries(shift):
    # a class-2 square whose interior cell sits right next to the boundary nearest the centre
    labels = torch.zeros(7, 7, dtype=torch.long)
    labels[2 + shift : 5 + shift, 2:5] = 2
    queries = select_queries(labels)
    boundary = [q for q in queries if q.kind == "boundary"]
    assert boundary
    for q in queries:
        if q.kind == "interior":
            gap = max(abs(q.row - boundary[0].row), abs(q.col - boundary[0].col))
            assert gap >= 2  # cells: the markers (9 pt) do not overlap at 4 px per cell and more


def test_term_maps_are_the_softmax_rows_of_the_queries_and_of_the_unary_logits():
    torch.manual_seed(0)
    P = LABELS.numel()
    p, u = torch.randn(2, P, P), torch.randn(2, 1, P)
    queries = select_queries(LABELS)
    maps = term_maps(captured_from_logits(p, u, (6, 8), (6, 8)), 1, queries)
    rows = [q.row * 8 + q.col for q in queries]
    # in times the uniform weight 1 / Pk (Pk = 48 keys)
    expected = p[1, rows].softmax(-1).reshape(len(queries), 6, 8).double() * 48
    torch.testing.assert_close(maps.pairwise, expected)
    torch.testing.assert_close(maps.unary, u[1, 0].softmax(-1).reshape(6, 8).double() * 48)
    assert (maps.keys, maps.sparse) == ("pixels", False)


def map_images(fig) -> list:
    """The attention-map layer of every map panel (the image, then a 2-d map over it; the ground truth is RGBA)."""
    return [ax.images[1] for ax in fig.axes if len(ax.images) == 2 and np.ndim(ax.images[1].get_array()) == 2]


def test_every_map_of_a_figure_is_drawn_on_one_scale_in_times_uniform_with_one_colour_bar():
    fig, queries = figure()
    maps = map_images(fig)
    assert len(maps) == len(queries) + 1  # every pairwise map and the unary map
    assert len({image.get_clim() for image in maps}) == 1  # one colour scale for the figure
    assert {image.get_cmap().name for image in maps} == {COLORMAP} == {"viridis"}  # perceptually uniform
    for image in maps:
        # an attention row sums to 1, so its mean over the uniform weight 1/Pk is 1: the values are in times uniform
        # (bilinear upsampling keeps the mean up to the border cells)
        assert np.asarray(image.get_array()).mean() == pytest.approx(1.0, rel=0.05)
    FigureCanvasAgg(fig).draw()
    bars = [ax for ax in fig.axes if ax.get_xlabel() == COLOUR_BAR_LABEL]
    assert len(bars) == 1 and bars[0].xaxis.get_scale() == "log"
    assert "one log scale for all maps" in CAPTION and sum(t.replace("\n", " ") == CAPTION for t in drawn_texts(fig))


def test_a_near_uniform_map_is_drawn_flat_and_a_peaked_one_across_the_colours():
    """NL's near-uniform maps (peaks 1.1-1.3x) must not look as structured as DNL's peaked ones."""
    P = LABELS.numel()
    logits = torch.randn(1, P, P, generator=torch.Generator().manual_seed(0))
    flat, _ = figure(pairwise_logits=0.05 * logits, unary=False)  # peaks 1.1-1.2x uniform
    peaked, _ = figure(pairwise_logits=8 * logits, unary=False)
    assert all(
        "peak 1.1x" in ax.get_title() or "peak 1.2x" in ax.get_title()
        for ax in flat.axes
        if "pairwise" in ax.get_title()
    )

    def colour_span(image) -> float:
        shown = image.norm(np.asarray(image.get_array()))  # 0..1: the colour map's position of each pixel
        return float(shown.max() - shown.min())

    assert max(colour_span(image) for image in map_images(flat)) < 0.1
    assert min(colour_span(image) for image in map_images(peaked)) > 0.5


def test_the_colour_scale_spans_a_tenth_to_ten_times_uniform_at_least_and_four_decades_below_the_peak_at_most():
    uniform = torch.full((4, 4), 1 / 16)
    assert (colour_scale([uniform]).vmin, colour_scale([uniform]).vmax) == pytest.approx((0.1, 10))
    sharp = torch.full((4, 4), 1e-9)
    sharp[0, 0] = 1 - 15e-9  # 16x uniform at its peak, almost nothing elsewhere
    scale = colour_scale([uniform, sharp])
    assert (scale.vmin, scale.vmax) == pytest.approx((16 / 1e4, 16))
    assert colour_scale([sharp * 0 + 1 / 16, uniform * 0.5 + 1 / 32]).vmax == pytest.approx(10)
