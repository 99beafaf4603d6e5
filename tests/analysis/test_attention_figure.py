"""Query selection from labels and the attention figure: a grid that reads at TensorBoard's card size."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

from dnlseg.analysis import Query, attention_figure, select_queries
from dnlseg.analysis.attention_figure import (
    CAPTION,
    COLORMAP,
    COLOUR_BAR_LABEL,
    SUBSET_CAPTION,
    TOKEN_CAPTION,
    colour_scale,
    grid_shape,
    term_maps,
)
from dnlseg.context import (
    ChannelAttention2d,
    CrissCrossKeys,
    InterlacedSparseAttention2d,
    TokenKeys,
    capture_attention,
)
from dnlseg.context.layers import pyramid_cover
from dnlseg.data.transforms import unnormalize
from tests.helpers import captured_from_logits, wake_context_blocks

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


def all_texts(fig) -> list[str]:
    """Every text of the figure, its line breaks as spaces."""
    return [t.get_text().replace("\n", " ") for t in fig.findobj(Text)]


def test_a_criss_cross_query_map_is_its_row_and_column_over_the_uniform_weight_on_them_and_uncoloured_elsewhere():
    P = 20  # a 4 x 5 grid: a query's cross has 4 + 5 - 1 = 8 keys
    p = torch.randn(1, P, P, generator=torch.Generator().manual_seed(0)) * 3
    captured = dataclasses.replace(
        captured_from_logits(p, torch.randn(1, 1, P), (4, 5), (4, 5)), keys=CrissCrossKeys((4, 5))
    )
    maps = term_maps(captured, 0, [Query(1, 2, 0, "interior")])
    cross = torch.zeros(4, 5, dtype=torch.bool)
    cross[1], cross[:, 2] = True, True
    weights = torch.softmax(p[0, 7].masked_fill(~cross.flatten(), -math.inf), -1).reshape(4, 5).double()
    assert maps.sparse and maps.pairwise.shape == (1, 4, 5)
    assert (maps.pairwise[0].isnan() == ~cross).all()  # off its keys: no colour
    torch.testing.assert_close(maps.pairwise[0][cross], weights[cross] * 8)  # 1x: uniform over its 8 keys
    queries = [Query(1, 2, 0, "interior")]
    fig = attention_figure(np.zeros((8, 10, 3)), torch.zeros(8, 10, dtype=torch.long), captured, 0, queries)
    (panel,) = [image for image in map_images(fig) if np.isnan(np.asarray(image.get_array(), dtype=float)).any()]
    assert np.isnan(np.asarray(panel.get_array(), dtype=float)).mean() == pytest.approx(12 / 20)  # cell by cell
    assert SUBSET_CAPTION in all_texts(fig)


def test_pyramid_cells_are_painted_over_the_pixels_they_cover_so_uniform_attention_paints_one():
    cover = pyramid_cover((4, 4), (1, 2))[None]  # cell 0: the whole 4 x 4 grid; cells 1-4: its 2 x 2 quadrants
    p = torch.zeros(1, 16, 5)
    p[0, 5, 1] = 50.0  # query 5 attends to the top-left quadrant only
    captured = dataclasses.replace(
        captured_from_logits(p, torch.zeros(1, 1, 5), (4, 4), (5, 1)), keys=TokenKeys("pyramid cells", cover, (4, 4))
    )
    maps = term_maps(captured, 0, [Query(1, 1, 0, "interior"), Query(0, 0, 0, "interior")])
    quadrant = torch.zeros(4, 4, dtype=torch.float64)
    quadrant[:2, :2] = 4.0  # all the weight on 4 of 16 pixels: 4x uniform
    torch.testing.assert_close(maps.pairwise[0], quadrant, atol=1e-12, rtol=0)
    torch.testing.assert_close(maps.pairwise[1], torch.ones(4, 4, dtype=torch.float64))  # uniform over the cells
    torch.testing.assert_close(maps.unary, torch.ones(4, 4, dtype=torch.float64))
    assert (maps.keys, maps.sparse) == ("pyramid cells", False)
    queries = [Query(1, 1, 0, "interior")]
    fig = attention_figure(np.zeros((8, 8, 3)), torch.zeros(8, 8, dtype=torch.long), captured, 0, queries)
    assert len(map_images(fig)) == len(queries) + 1
    assert TOKEN_CAPTION.format(what="pyramid cells") in all_texts(fig)


def test_isa_maps_show_the_image_without_its_padding_and_its_queries_at_their_place_on_the_padded_grid():
    torch.manual_seed(0)
    block = wake_context_blocks(InterlacedSparseAttention2d(8, group_size=(4, 4))).eval()
    with capture_attention(block) as captured, torch.no_grad():
        block(torch.randn(1, 8, 6, 7))  # padded to 8 x 8: a row above and below, a column on the right
    call = captured["short_range"][0]
    maps = term_maps(call, 0, [Query(0, 0, 0, "interior")])  # the image's top-left cell: (1, 0) on the padded grid
    assert maps.pairwise.shape == (1, 6, 7) and maps.unary.shape == (6, 7)
    rows = torch.tensor([[8]])
    padded = (call.pairwise_attention(rows)[0, 0] * 16).reshape(8, 8).double()  # its 4 x 4 tile: 16 keys
    padded = padded.masked_fill(~call.key_mask(rows)[0, 0].reshape(8, 8), math.nan)
    torch.testing.assert_close(maps.pairwise[0], padded[1:7, :7], equal_nan=True)
    assert maps.pairwise[0, :3, :4].isfinite().all() and maps.pairwise[0, 3:].isnan().all()  # its tile's image part


def test_keys_that_cover_no_pixels_have_no_map():
    block = ChannelAttention2d(4)
    with capture_attention(block) as captured:
        block(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="keys that are channels cover no pixels: no map to paint"):
        term_maps(captured[""][0], 0, [Query(0, 0, 0, "interior")])
