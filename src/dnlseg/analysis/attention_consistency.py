"""What the attention terms attend to, as two numbers (docs/science.md section 2.2, the paper's Figure 1 claim).

Both are ratios against chance, so 1 means "no better than uniform attention":

pairwise-category consistency, per labelled query i of class c:
    ( sum_{j : label_j = c} a_ij )  /  ( #{j : label_j = c} / Pk ),     a = softmax_j(p_ij)
    -- the pairwise attention mass on the query's own class over that class's area fraction; a query
    attending only to its own class scores 1 / area fraction.

unary-boundary consistency, per image:
    ( sum_{j in band} s_j )  /  ( #band / Pk ),     s = softmax_j(u_j)
    -- the unary attention mass within ``radius`` key cells of a ground-truth boundary over the band's
    area fraction. A boundary cell is a key cell whose label (the ignore label counting as a label)
    differs from a 4-neighbour's.

Labels live on the key grid (Hk, Wk): the ground truth is resized there by nearest neighbour. For NL,
p and u are its implicit decomposition. Both are computed from a block call's captured factors
(``dnlseg.context.CapturedAttention``) in O(P) memory: the sampled query rows of p (``sampled_category_consistency``)
or, for every query at once, the attention with the keys' one-hot labels as values (``category_consistency``);
the unary mass is s @ band.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dnlseg.context import CapturedAttention


def labels_on_grid(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, H, W) integer labels -> (N, h, w) by nearest neighbour."""
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long()


def pairwise_category_consistency(
    pairwise_attention: Tensor, query_labels: Tensor, key_labels: Tensor, ignore_index: int = 255
) -> Tensor:
    """Per labelled query, own-class attention mass over own-class area fraction.

    Args:
        pairwise_attention: a = softmax_j(p_ij), (N, P, Pk); rows sum to 1.
        query_labels: (N, P) class of each query position.
        key_labels: (N, Pk) class of each key position.
        ignore_index: queries with this label are skipped.

    Returns:
        (Q,) one value per labelled query, over the whole batch.
    """
    same = query_labels[:, :, None] == key_labels[:, None, :]  # (N, P, Pk): key j has query i's class
    mass = (pairwise_attention * same).sum(-1)  # (N, P)
    area = same.float().mean(-1)  # (N, P): own-class area fraction on the key grid
    keep = (query_labels != ignore_index) & (area > 0)
    return mass[keep] / area[keep]


def boundary_band(labels: Tensor, radius: int = 1) -> Tensor:
    """(N, h, w) labels -> bool (N, h, w): cells within ``radius`` cells (Chebyshev) of a label change."""
    edge = torch.zeros_like(labels, dtype=torch.bool)
    vertical = labels[:, 1:, :] != labels[:, :-1, :]
    horizontal = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    if radius > 0:
        edge = F.max_pool2d(edge[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0
    return edge


def unary_boundary_consistency(unary_attention: Tensor, band: Tensor) -> Tensor:
    """Per image, unary attention mass inside the boundary band over the band's area fraction.

    Args:
        unary_attention: s = softmax_j(u_j), (N, Pk); sums to 1 per image.
        band: bool (N, Pk) from ``boundary_band`` flattened.

    Returns:
        (N',) one value per image that has a boundary.
    """
    area = band.float().mean(-1)  # (N,)
    mass = (unary_attention * band).sum(-1)  # (N,)
    keep = area > 0
    return mass[keep] / area[keep]


def sampled_category_consistency(
    captured: CapturedAttention, query_labels: Tensor, key_labels: Tensor, rows: Tensor, ignore_index: int = 255
) -> Tensor:
    """``pairwise_category_consistency`` of the query rows ``rows`` (N, Q), from the factors: O(Q Pk) memory.

    Args:
        captured: one block call with a pairwise term.
        query_labels: (N, P) labels on the query grid.
        key_labels: (N, Pk) labels on the key grid.
        rows: (N, Q) query indices.
        ignore_index: queries with this label are skipped.
    """
    attention = captured.pairwise_attention(rows)  # (N, Q, Pk)
    if attention is None:
        raise ValueError("pairwise consistency of a block without a pairwise term")
    return pairwise_category_consistency(attention, torch.gather(query_labels, 1, rows), key_labels, ignore_index)


def category_consistency(
    captured: CapturedAttention, query_labels: Tensor, key_labels: Tensor, ignore_index: int = 255
) -> Tensor:
    """``pairwise_category_consistency`` of every labelled query, with the fused kernel: O(P K) memory.

    The own-class mass of query i is row i of softmax_j(p_ij) @ onehot(key labels): an attention whose values are
    the keys' one-hot labels (ignored keys: a zero row, so they take mass but belong to no class).
    """
    labelled = key_labels != ignore_index
    num_classes = int(torch.cat([key_labels[labelled], query_labels[query_labels != ignore_index]]).max(0).values + 1)
    onehot = F.one_hot(key_labels.masked_fill(~labelled, 0), num_classes) * labelled[..., None]  # (N, Pk, K)
    mass = captured.pairwise_mass(onehot)  # (N, P, K): sum_j a_ij [label_j = k]
    if mass is None:
        raise ValueError("category consistency of a block without a pairwise term")
    area = onehot.float().mean(1)  # (N, K): each class's area fraction on the key grid
    safe = query_labels.masked_fill(query_labels == ignore_index, 0)[..., None]  # (N, P, 1)
    own_mass, own_area = mass.gather(2, safe)[..., 0], area[:, None].expand_as(mass).gather(2, safe)[..., 0]
    keep = (query_labels != ignore_index) & (own_area > 0)
    return own_mass[keep] / own_area[keep]


def boundary_consistency(captured: CapturedAttention, key_labels: Tensor, radius: int = 1) -> Tensor:
    """``unary_boundary_consistency`` of one block call: key_labels (N, Hk, Wk) -> one value per image."""
    band = boundary_band(key_labels, radius).flatten(1)  # (N, Pk)
    attention = captured.unary_attention()  # (N, Pk)
    if attention is None:
        raise ValueError("boundary consistency of a block without a unary term")
    return unary_boundary_consistency(attention, band)
