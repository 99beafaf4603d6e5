"""Pictures of what the attention terms attend to: query points chosen from the labels, and one figure per image.

A figure shows, for one image: the image with its ground truth (a legend names the classes) and the query
points; for each query the pairwise map a_i. = softmax_j(p_ij) (N x Pk row of the materialised attention); and
the unary map s = softmax_j(u_j). Maps live on the key grid (Hk, Wk) and are upsampled bilinearly to the image
and overlaid. For NL, p and u are its implicit decomposition. Maps come from a block call's captured factors
(``dnlseg.context.capture_attention``): only the query rows are computed, never the (P, Pk) matrix.

Each query's map shows its own keys (``term_maps``): the whole key grid (NL, DNL, PAM); its row and column (CC) or
its group (ISA), drawn cell by cell and uncoloured off its keys, 1x being uniform over its keys; keys that are not
pixels but cover some (ANN's pyramid cells, OCR's class regions, EMA's bases) painted over the pixels they cover,
each key's weight spread by its cover (the caption says which).

Colours: every map of a figure is drawn on one scale, in units of the uniform weight 1/Pk (1x: the query attends
to every key cell alike), logarithmic (attention weights are exponentials of logits: DNL's pairwise peaks reach
hundreds of times uniform while its unary map stays within a few), with one colour bar and a perceptually uniform
colour map (``COLORMAP``). The scale spans at least 1/10x to 10x (``MIN_SPAN``), so a near-uniform map (NL's,
often within 0.8x-1.3x) looks flat, as it is, instead of being stretched to the full colour range; at most
``MAX_DECADES`` decades below the figure's peak, so a sharp map's near-zero weights do not squeeze the rest.

Layout: TensorBoard's Images tab shrinks a figure to its card width (about 330 px), so a one-row strip of five
panels is unreadable there. The figure is 460 px wide (``FIGURE_WIDTH`` at 100 dpi) with the panels in a grid
of (usually) two columns, short two-line panel titles, the colour bar below them, a legend of the ground-truth
classes and one caption explaining colours and "peak" numbers (in the free grid cell, else below), and each query
drawn with its own marker shape and colour. PNG files are written at twice the resolution (``AttentionMapLogger``).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps, patheffects
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Patch
from torch import Tensor

from dnlseg.analysis.attention_consistency import boundary_band, image_window
from dnlseg.context import CapturedAttention


@dataclass(frozen=True)
class Query:
    """A query cell (row, col) on the query grid, with its ground-truth class and why it was chosen."""

    row: int
    col: int
    label: int
    kind: str  # "interior" (deepest cell of a class) or "boundary"


QUERY_MARKERS = ("o", "^", "s", "D", "v", "P")  # one shape per query ...
QUERY_COLOURS = ("#ffffff", "#ff40ff", "#40ffff", "#ffff40", "#ff8c1a", "#80ff80")  # ... and one fill colour
MIN_QUERY_GAP = 2  # cells (Chebyshev distance) between the boundary query and the others, so markers do not overlap
FIGURE_WIDTH = 4.6  # inches
GRID_ASPECT = 3 / 4  # width / height of the panel grid: portrait, TensorBoard cards grow downwards
COLORMAP = "viridis"  # perceptually uniform: brighter is more attention, in print and for colour-blind readers
MAP_ALPHA = 0.7  # of a map over its image
MIN_SPAN = 10.0  # the colour scale covers at least 1/MIN_SPAN .. MIN_SPAN times uniform
MAX_DECADES = 4  # ... and at most this many decades below the figure's peak
COLOUR_BAR_LABEL = "attention weight / uniform weight 1/Pk"
CAPTION = (
    "pairwise k: the attention of query k; unary: the same for all queries. Colours: the weight over the uniform "
    "1/Pk, one log scale for all maps (bar); peak: a map's maximum on it."
)
# what the caption and the colour bar say instead where a query has some of the key grid, or keys are not pixels
SUBSET_CAPTION = (
    "pairwise k: the attention of query k over its own keys only (uncoloured: not its keys); unary: the same for all "
    "queries. Colours: the weight over the uniform one (1 / its number of keys), one log scale for all maps (bar); "
    "peak: a map's maximum on it."
)
TOKEN_CAPTION = (
    "Keys are {what}: each key's weight is spread over the pixels it covers. pairwise k: the attention of query k; "
    "unary: the same for all queries. Colours: over the uniform 1/(pixels), one log scale for all maps (bar); peak: "
    "a map's maximum on it."
)
SUBSET_BAR_LABEL = "attention weight / uniform weight"
TOKEN_BAR_LABEL = "painted weight / uniform weight"


def caption_of(maps: TermMaps) -> tuple[str, str]:
    """(caption, colour bar label) for the kind of keys of ``maps``."""
    if maps.keys != "pixels":
        return TOKEN_CAPTION.format(what=maps.keys), TOKEN_BAR_LABEL
    return (SUBSET_CAPTION, SUBSET_BAR_LABEL) if maps.sparse else (CAPTION, COLOUR_BAR_LABEL)


def select_queries(labels: Tensor, max_classes: int = 3, ignore_index: int = 255) -> list[Query]:
    """Deterministic query cells from labels (h, w) on the query grid.

    One cell per class for up to ``max_classes`` classes (largest area first, ties by class id): the cell of
    that class farthest from any other label (its most interior cell, first in raster order on ties). Then
    one labelled cell on a label change (the boundary cell nearest to the grid centre) at least
    ``MIN_QUERY_GAP`` cells from the other queries, if there is one.
    """
    labels_np = labels.cpu().numpy()
    h, w = labels_np.shape
    classes, counts = np.unique(labels_np[labels_np != ignore_index], return_counts=True)
    order = sorted(zip(classes.tolist(), counts.tolist(), strict=True), key=lambda t: (-t[1], t[0]))
    queries = []
    for cls, _ in order[:max_classes]:
        inside = np.pad(labels_np == cls, 1, constant_values=False).astype(np.uint8)  # border counts as outside
        depth = cv2.distanceTransform(inside, cv2.DIST_L2, 3)[1:-1, 1:-1]  # (h, w) distance to another label
        r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
        queries.append(Query(int(r), int(c), int(cls), "interior"))
    edge = boundary_band(labels[None].cpu(), radius=0)[0].numpy() & (labels_np != ignore_index)
    for q in queries:  # keep the boundary query's marker clear of the others
        edge[
            max(q.row - MIN_QUERY_GAP + 1, 0) : q.row + MIN_QUERY_GAP,
            max(q.col - MIN_QUERY_GAP + 1, 0) : q.col + MIN_QUERY_GAP,
        ] = False
    if edge.any():
        rows, cols = np.nonzero(edge)
        dist = (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2
        i = int(np.argmin(dist))  # np.nonzero is in raster order: ties go to the first
        queries.append(Query(int(rows[i]), int(cols[i]), int(labels_np[rows[i], cols[i]]), "boundary"))
    return queries


@dataclass(frozen=True)
class TermMaps:
    """The attention maps of one image, painted on its pixels in times the uniform weight (1x: every key alike).

    pairwise (Q, h, w): each query's map, NaN off its keys (CC: its row and column; ISA: its group); unary (h, w).
    ``keys``: what the keys are ("pixels", or ``TokenKeys.what``: "pyramid cells", ...); ``sparse``: whether a query
    attends to a subset of the key grid (drawn cell by cell, the rest uncoloured).
    """

    pairwise: Tensor | None
    unary: Tensor | None
    keys: str = "pixels"
    sparse: bool = False


def term_maps(captured: CapturedAttention, index: int, queries: Sequence[Query]) -> TermMaps:
    """Image ``index`` of a captured block call: the queries' pairwise maps a_i. = softmax_j(p_ij) over their keys and
    the unary map s = softmax_j(u_j), painted on the image's pixels in times uniform (``TermMaps``).

    Keys that are pixels: the key grid's part under the image (``image_window``: ISA's padding cut off); a_ij times
    the number of query i's keys (Pk, or |K(i)| for a per-query subset), NaN off them. Keys that are not pixels and
    cover some (ANN's pyramid cells, OCR's class regions): each key's weight spread over the pixels it covers,
    sum_k a_ik cover_kn on the cover's grid, times its Pc pixels (for pyramid cells, uniform attention paints 1x).
    Only the queries' rows of p are computed (O(Q Pk)), never the whole (P, Pk) matrix. ``queries``: cells of the
    image's part of the query grid (``image_window``).
    """
    keys = captured.key_set
    cover = getattr(keys, "cover", None) if keys.kind == "tokens" else None
    if keys.kind == "tokens" and cover is None:
        raise ValueError(f"keys that are {getattr(keys, 'what', 'tokens')} cover no pixels: no map to paint")

    def painted(weights: Tensor, inside: Tensor | None) -> Tensor:
        """weights (M, Pk) of the keys, inside (M, Pk) or None -> (M, h, w) in times uniform on the image."""
        if cover is not None:  # spread over the pixels each key covers: (M, Pk) @ (Pk, Pc) -> (M, Pc)
            Hc, Wc = keys.cover_size  # type: ignore[attr-defined]  # TokenKeys with a cover
            image_cover = cover[index if cover.shape[0] > 1 else 0].detach()  # (Pk, Pc), not copied
            density = weights.to(image_cover) @ image_cover
            return (density.double() * (Hc * Wc)).reshape(-1, Hc, Wc)
        weights = weights.double()
        count = inside.sum(-1, keepdim=True) if inside is not None else weights.shape[-1]
        ratio = weights * count  # over the uniform weight 1 / (number of the query's keys)
        if inside is not None:
            ratio = ratio.masked_fill(~inside, float("nan"))
        top, left, height, width = image_window(captured, "key")
        return ratio.reshape(-1, *captured.key_size)[:, top : top + height, left : left + width]

    pairwise = unary = None
    if captured.pairwise_query is not None and queries:
        N = captured.pairwise_query.shape[0]
        top, left, _, _ = image_window(captured, "query")
        W = captured.query_size[1]
        rows = torch.tensor([(q.row + top) * W + q.col + left for q in queries], device=captured.pairwise_query.device)
        attention = captured.pairwise_attention(rows.expand(N, -1))  # (N, Q, Pk), the queries' rows only
        if attention is not None:
            inside = captured.key_mask(rows.expand(N, -1))  # (N, Q, Pk) or None: every key
            pairwise = painted(attention[index], None if inside is None else inside[index])
    unary_attention = captured.unary_attention()  # (N, Pk) or None
    if unary_attention is not None:
        unary = painted(unary_attention[index][None], None)[0]  # the whole grid: the same for every query
    return TermMaps(pairwise, unary, getattr(keys, "what", "pixels"), keys.kind == "subset")


def times_uniform(ratio: Tensor, size: tuple[int, int], sparse: bool = False) -> np.ndarray:
    """A map (h, w) in times uniform, upsampled to (H, W), as numpy: bilinearly, or cell by cell (``sparse``: NaN off
    a query's keys stays NaN, i.e. uncoloured)."""
    ratio = ratio.double().cpu()[None, None]
    if sparse:
        return F.interpolate(ratio, size=size, mode="nearest")[0, 0].numpy()
    return F.interpolate(ratio, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def colour_scale(maps: Sequence[Tensor]) -> LogNorm:
    """One logarithmic colour scale, in times uniform, for all attention maps (weights (Hk, Wk) over every key) of a
    figure (module docstring); ``ratio_scale`` of the maps times their Pk."""
    return ratio_scale([m.double().cpu() * m.numel() for m in maps])


def ratio_scale(ratios: Sequence[Tensor]) -> LogNorm:
    """One logarithmic colour scale for maps in times uniform (NaN: off a query's keys, left out): from the smallest
    ratio to the peak, widened to [1/MIN_SPAN, MIN_SPAN], cut at MAX_DECADES below the peak."""
    shown = [r.double().cpu()[~r.isnan()] for r in ratios]
    shown = [r for r in shown if r.numel()]
    peak = max([MIN_SPAN, *(r.max().item() for r in shown)])
    low = min([1 / MIN_SPAN, *(r.min().item() for r in shown)])
    return LogNorm(vmin=max(low, peak / 10**MAX_DECADES), vmax=peak, clip=True)


def grid_shape(panels: int, aspect: float, target: float = GRID_ASPECT) -> tuple[int, int]:
    """(rows, cols) for ``panels`` panels of width/height ``aspect`` whose grid is closest to ``target``."""
    shapes = [(math.ceil(panels / cols), cols) for cols in range(1, panels + 1)]
    return min(shapes, key=lambda rc: (abs(math.log(rc[1] * aspect / rc[0] / target)), rc[0] * rc[1]))


def class_colours(palette: Sequence[Sequence[int]] | None, count: int) -> np.ndarray:
    """(count, 3) float RGB in [0, 1]: the dataset's palette, else matplotlib's tab20."""
    if palette is not None and len(palette) >= count:
        return np.asarray(palette[:count], dtype=float) / 255
    return np.asarray([colormaps["tab20"](i % 20)[:3] for i in range(count)])


def attention_figure(
    image: np.ndarray,
    mask: Tensor,
    maps: CapturedAttention,
    index: int,
    queries: Sequence[Query],
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str = "",
    palette: Sequence[Sequence[int]] | None = None,
) -> Figure:
    """A grid of panels: image + ground truth + queries, the pairwise map of each query, the unary map.

    All map panels share one colour scale in times the uniform weight 1 / Pk (``colour_scale``, one colour bar);
    each title gives its map's maximum on it (the caption says so once). The ground truth is drawn in the
    dataset's class colours, named in a legend.

    Args:
        image: (H, W, 3) display RGB in [0, 1] (``unnormalize``).
        mask: (H, W) ground truth at the image size.
        maps: the captured attention of a forward over a batch containing the image.
        index: position of the image in that batch.
        queries: cells on ``maps.query_size`` (``select_queries``).
        class_names: names for the legend and titles (default: class ids).
        ignore_index: label drawn transparent.
        title: figure title (e.g. head, block name and step).
        palette: RGB (0..255) per class for the ground truth (default: tab20 colours).
    """
    H, W = image.shape[:2]
    _, _, h, w = image_window(maps, "query")  # the queries' cells: the image's part of the query grid
    painted = term_maps(maps, index, queries)
    pairwise, unary = painted.pairwise, painted.unary
    caption_text, bar_label = caption_of(painted)
    panels = 1 + (len(queries) if pairwise is not None else 0) + (1 if unary is not None else 0)
    rows, cols = grid_shape(panels, W / H)
    width = FIGURE_WIDTH
    bar = 0.8 if panels > 1 else 0  # the colour bar and its label
    height = width * rows * H / (cols * W) + 0.5 + 0.5 * rows + bar + (0 if rows * cols > panels else 1.6)
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[panels + 1 :]:
        fig.delaxes(ax)
    key_panel = axes[panels] if len(axes) > panels else None  # a free cell holds the legend and the caption
    points = [((q.col + 0.5) * W / w - 0.5, (q.row + 0.5) * H / h - 0.5) for q in queries]  # (x, y) in pixels
    fontsize = 11

    def names(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    def mark(ax, k: int, x: float, y: float) -> None:
        style = {"ms": 9, "mfc": QUERY_COLOURS[k % len(QUERY_COLOURS)], "mec": "black", "mew": 1.5}
        ax.plot(x, y, QUERY_MARKERS[k % len(QUERY_MARKERS)], **style)
        ax.annotate(str(k + 1), (x, y), xytext=(6, 4), textcoords="offset points", fontsize=fontsize, weight="bold",
                    color=QUERY_COLOURS[k % len(QUERY_COLOURS)], path_effects=outline())  # fmt: skip

    labels = mask.cpu().numpy().astype(np.int64)
    labelled = labels != ignore_index
    present = sorted(np.unique(labels[labelled]).tolist())
    colours = class_colours(palette, max(present, default=0) + 1)
    overlay = np.zeros((H, W, 4))
    overlay[labelled, :3] = colours[labels[labelled]]
    overlay[labelled, 3] = 0.45
    ax = axes[0]
    ax.imshow(image)
    ax.imshow(overlay, interpolation="nearest")
    for k, (x, y) in enumerate(points):
        mark(ax, k, x, y)
    ax.set_title("ground truth,\nqueries 1-" + str(len(queries)) if queries else "ground truth", fontsize=fontsize)

    shown = [*(pairwise if pairwise is not None else []), *([unary] if unary is not None else [])]
    norm = ratio_scale(shown) if shown else None
    drawn = None

    def draw_map(ax, ratio: Tensor, sparse: bool):
        ax.imshow(image)
        return ax.imshow(times_uniform(ratio, (H, W), sparse), cmap=COLORMAP, norm=norm, alpha=MAP_ALPHA)

    col = 1
    if pairwise is not None:
        for k, (q, (x, y)) in enumerate(zip(queries, points, strict=True)):
            ax = axes[col]
            drawn = draw_map(ax, pairwise[k], painted.sparse)
            mark(ax, k, x, y)
            peak = pairwise[k].nan_to_num(0.0).max().item()  # max weight over the uniform one
            ax.set_title(f"pairwise {k + 1}, peak {peak:.1f}x\n{names(q.label)} ({q.kind})", fontsize=fontsize)
            col += 1
    if unary is not None:
        ax = axes[col]
        drawn = draw_map(ax, unary, False)
        ax.set_title(f"unary, peak {unary.max().item():.1f}x\n(all queries)", fontsize=fontsize)
    for ax in axes[:panels]:
        ax.set_axis_off()
    if drawn is not None:
        grid = axes[: panels + (key_panel is not None)]  # every cell, so that the panels keep one size
        colour_bar = fig.colorbar(drawn, ax=grid, location="bottom", shrink=0.9, aspect=25, pad=0.02)
        colour_bar.set_label(bar_label, fontsize=fontsize)
        colour_bar.ax.tick_params(labelsize=fontsize - 1)
        colour_bar.ax.xaxis.set_major_formatter(lambda value, _: f"{value:g}x")
    handles = [Patch(facecolor=colours[c], edgecolor="black", label=names(c)) for c in present]
    legend = {"handles": handles, "fontsize": fontsize, "title": "ground truth", "title_fontsize": fontsize}
    if key_panel is not None:
        key_panel.set_axis_off()
        if handles:
            key_panel.legend(**legend, loc="upper center", ncols=1 if len(handles) <= 6 else 2, frameon=False)
        key_panel.text(0.5, 0.0, textwrap.fill(caption_text, 28), ha="center", va="bottom", fontsize=fontsize,
                       transform=key_panel.transAxes)  # fmt: skip
    else:  # a strip below the grid, outside the constrained layout: legend, then the caption
        height = fig.get_size_inches()[1]
        caption, strip = 0.75 / height, (0.75 + (0.85 if handles else 0)) / height
        layout = fig.get_layout_engine()
        assert isinstance(layout, ConstrainedLayoutEngine)  # Figure(layout="constrained")
        layout.set(rect=(0, strip, 1, 1 - strip))
        if handles:
            fig.legend(**legend, loc="lower center", bbox_to_anchor=(0.5, caption), ncols=min(len(handles), 3))
        fig.text(0.5, caption / 2, textwrap.fill(caption_text, 52), ha="center", va="center", fontsize=fontsize)
    if title:
        fig.suptitle(title, fontsize=fontsize + 1)
    return fig


def outline() -> list:
    """A black outline that keeps text readable over any map colour."""
    return [patheffects.withStroke(linewidth=2.5, foreground="black")]
