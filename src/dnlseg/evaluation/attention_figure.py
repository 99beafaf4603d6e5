"""Pictures of what the attention terms attend to: query points chosen from the labels, and one figure per image.

A figure shows, for one image: the image with its ground truth and the query points; for each query the
pairwise map a_i. = softmax_j(p_ij) (N x Pk row of the materialised attention); and the unary map
s = softmax_j(u_j). Maps live on the key grid (Hk, Wk) and are upsampled bilinearly to the image and
overlaid. For NL, p and u are its implicit decomposition. Maps come from a block call's captured factors
(``dnlseg.context.capture_attention``): only the query rows are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from dnlseg.context import CapturedAttention
from dnlseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dnlseg.evaluation.attention_consistency import boundary_band


@dataclass(frozen=True)
class Query:
    """A query cell (row, col) on the query grid, with its ground-truth class and why it was chosen."""

    row: int
    col: int
    label: int
    kind: str  # "interior" (deepest cell of a class) or "boundary"


def select_queries(labels: Tensor, max_classes: int = 3, ignore_index: int = 255) -> list[Query]:
    """Deterministic query cells from labels (h, w) on the query grid.

    One cell per class for up to ``max_classes`` classes (largest area first, ties by class id): the cell of
    that class farthest from any other label (its most interior cell, first in raster order on ties). Then
    one labelled cell on a label change (the boundary cell nearest to the grid centre), if there is one.
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
    if edge.any():
        rows, cols = np.nonzero(edge)
        dist = (rows - (h - 1) / 2) ** 2 + (cols - (w - 1) / 2) ** 2
        i = int(np.argmin(dist))  # np.nonzero is in raster order: ties go to the first
        queries.append(Query(int(rows[i]), int(cols[i]), int(labels_np[rows[i], cols[i]]), "boundary"))
    return queries


def unnormalize(
    image: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) float RGB in [0, 1] for display."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * s + m).clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()


def term_maps(captured: CapturedAttention, index: int, queries: Sequence[Query]) -> tuple[Tensor | None, Tensor | None]:
    """Image ``index`` of a captured block call: pairwise maps (Q, Hk, Wk) of the queries and the unary map (Hk, Wk).

    Only the queries' rows of p are computed (O(Q Pk)), never the whole (P, Pk) matrix.
    """
    W, (Hk, Wk) = captured.query_size[1], captured.key_size
    pairwise = unary = None
    if captured.pairwise_query is not None and queries:
        N = captured.pairwise_query.shape[0]
        rows = torch.tensor([q.row * W + q.col for q in queries], device=captured.pairwise_query.device)
        attention = captured.pairwise_attention(rows.expand(N, -1))[index]  # (Q, Pk), the queries' rows only
        pairwise = attention.reshape(len(queries), Hk, Wk)
    if captured.unary_logits is not None:
        unary = captured.unary_attention()[index].reshape(Hk, Wk)  # (Pk,) -> (Hk, Wk)
    return pairwise, unary


def _upsample(grid: Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) numpy, bilinear, rescaled to [0, 1] for the colour map."""
    up = F.interpolate(grid[None, None].float().cpu(), size=size, mode="bilinear", align_corners=False)[0, 0]
    up = up - up.min()
    return (up / up.max().clamp_min(1e-12)).numpy()


def attention_figure(
    image: np.ndarray,
    mask: Tensor,
    maps: CapturedAttention,
    index: int,
    queries: Sequence[Query],
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    title: str = "",
) -> Figure:
    """One row: image + ground truth + queries, the pairwise map of each query, the unary map.

    Each map panel is scaled to its own maximum; its title gives that maximum over the uniform weight 1 / Pk.

    Args:
        image: (H, W, 3) display RGB in [0, 1] (``unnormalize``).
        mask: (H, W) ground truth at the image size.
        maps: the captured attention of a forward over a batch containing the image.
        index: position of the image in that batch.
        queries: cells on ``maps.query_size`` (``select_queries``).
        class_names: names for the panel titles (default: class ids).
        ignore_index: label drawn transparent.
        title: figure title (e.g. block name and step).
    """
    H, W = image.shape[:2]
    h, w = maps.query_size
    pairwise, unary = term_maps(maps, index, queries)
    panels = 1 + (len(queries) if pairwise is not None else 0) + (1 if unary is not None else 0)
    fig = Figure(figsize=(2.6 * panels, 2.9))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    points = [((q.col + 0.5) * W / w - 0.5, (q.row + 0.5) * H / h - 0.5) for q in queries]  # (x, y) in pixels
    markers = "o^sDv"

    def names(c: int) -> str:
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    ax = axes[0]
    labels = mask.cpu().numpy().astype(float)
    labels[labels == ignore_index] = np.nan
    ax.imshow(image)
    ax.imshow(np.ma.masked_invalid(labels), cmap="tab10", alpha=0.35, vmin=0, vmax=9, interpolation="nearest")
    for k, (x, y) in enumerate(points):
        ax.plot(x, y, markers[k % len(markers)], ms=8, mfc="white", mec="black", mew=1.5)
        ax.annotate(str(k + 1), (x, y), xytext=(4, 4), textcoords="offset points", color="white", fontsize=8)
    ax.set_title("image, ground truth, queries", fontsize=8)

    col = 1
    if pairwise is not None:
        for k, (q, (x, y)) in enumerate(zip(queries, points, strict=True)):
            ax = axes[col]
            ax.imshow(image)
            ax.imshow(_upsample(pairwise[k], (H, W)), cmap="jet", alpha=0.55, vmin=0, vmax=1)
            ax.plot(x, y, markers[k % len(markers)], ms=8, mfc="white", mec="black", mew=1.5)
            peak = pairwise[k].max().item() * pairwise[k].numel()  # max weight over the uniform 1 / Pk
            ax.set_title(f"pairwise, query {k + 1} ({names(q.label)}, {q.kind}), peak {peak:.1f}x", fontsize=8)
            col += 1
    if unary is not None:
        ax = axes[col]
        ax.imshow(image)
        ax.imshow(_upsample(unary, (H, W)), cmap="jet", alpha=0.55, vmin=0, vmax=1)
        ax.set_title(f"unary, peak {unary.max().item() * unary.numel():.1f}x uniform", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
