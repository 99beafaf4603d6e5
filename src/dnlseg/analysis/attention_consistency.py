"""What the attention terms attend to, as two numbers (docs/science.md section 2.2, the paper's Figure 1 claim).

Both are ratios against chance, so 1 means "no better than uniform attention over the query's keys":

pairwise-category consistency, per labelled query i of class c:
    ( sum_j a_ij D_jc )  /  ( mean_{j in K(i)} D_jc ),     a = softmax_j(p_ij) over K(i), query i's keys
    -- the pairwise attention mass on the query's own class over the mass uniform attention over the same keys
    puts there. D_jc is key j's class distribution: for keys that are pixels the one-hot label (the denominator is
    then the class's area fraction among the query's keys: #{j in K(i): label_j = c} / |K(i)|, over the whole key
    grid for NL, DNL, PAM; over the row and column for CC, the group for ISA); for keys that are not pixels (ANN's
    pyramid cells, OCR's class regions) the pixels' one-hot labels weighted by the key's cover,
    D_k = sum_n cover_kn onehot(label_n): the probability that a pixel drawn from the key's cover has class c.
    A query attending only to keys of its own class scores 1 / (its class's share among its keys).

unary-boundary consistency, per image:
    ( sum_{j in band} s_j )  /  ( #band / Pk ),     s = softmax_j(u_j)
    -- the unary attention mass within ``radius`` key cells of a ground-truth boundary over the band's
    area fraction. A boundary cell is a key cell whose label (the ignore label counting as a label)
    differs from a 4-neighbour's. Only for keys that are pixels (a pyramid cell or a class region lies on no
    boundary).

Labels live on the query grid and the key grid (Hk, Wk) -- or, for keys that are not pixels, the grid their cover
lies on: the ground truth is resized there by nearest neighbour; where a block pads its grid (ISA: to whole groups;
``keys.image`` says where the image lies) the padding is unlabelled (ignored) and lies on no boundary. Ignored keys
take attention mass but belong to no class. For NL, p and u are its implicit decomposition. Both are computed from a
block call's captured factors (``dnlseg.context.CapturedAttention``) in O(P) memory: the sampled query rows of p
(``sampled_category_consistency``) or, for every query at once, the attention with the keys' class distributions
as values (``category_consistency``); the unary mass is s @ band.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dnlseg.context import CapturedAttention
from dnlseg.context.base import at_least_float32


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


def image_window(captured: CapturedAttention, grid: str = "query") -> tuple[int, int, int, int]:
    """(top, left, height, width): where the image lies on the call's query (``grid="query"``) or key grid -- the
    whole grid, except where the block padded it (ISA: ``keys.image`` on the padded grid of its groups)."""
    size = captured.query_size if grid == "query" else captured.key_size
    image = getattr(captured.key_set, "image", None)  # GroupKeys: the image on the padded grid
    if image is not None and tuple(getattr(captured.key_set, "size", ())) == tuple(size):
        return image
    return (0, 0, *size)


def labels_on_call_grid(
    masks: Tensor, captured: CapturedAttention, grid: str = "query", ignore_index: int = 255
) -> Tensor:
    """(N, H, W) labels -> (N, h, w) on the call's query or key grid (``image_window``): resized by nearest
    neighbour onto the image's part of the grid, the padding around it ``ignore_index``."""
    size = captured.query_size if grid == "query" else captured.key_size
    top, left, height, width = image_window(captured, grid)
    labels = labels_on_grid(masks, (height, width))
    if (height, width) == tuple(size):
        return labels
    return F.pad(labels, (left, size[1] - width - left, top, size[0] - height - top), value=ignore_index)


def one_hot_classes(labels: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """(N, P) integer labels -> (N, P, K) float one-hot rows, an ignored label a zero row (it belongs to no class)."""
    labelled = labels != ignore_index
    return (F.one_hot(labels.masked_fill(~labelled, 0), num_classes) * labelled[..., None]).float()


def num_classes_of(masks: Tensor, ignore_index: int = 255) -> int:
    """1 + the largest label of ``masks`` that is not ignored (1 when every label is ignored)."""
    labelled = masks[masks != ignore_index]
    return int(labelled.max()) + 1 if labelled.numel() else 1


def key_classes(masks: Tensor, captured: CapturedAttention, num_classes: int, ignore_index: int = 255) -> Tensor:
    """D (N, Pk, K): each key's class distribution from the ground truth ``masks`` (N, H, W).

    Keys that are pixels: the one-hot label of the key cell (``labels_on_call_grid``). Keys that are not pixels
    (``keys.kind == "tokens"``, ANN's pyramid cells, OCR's class regions): D_k = sum_n cover_kn onehot(label_n) over
    the pixels n of the grid the key's cover lies on; a key's row sums to the cover weight on labelled pixels (1
    without ignored pixels). O(Pk Pc) for tokens (Pk = 110 cells or K regions), O(Pk K) otherwise.
    """
    keys = captured.key_set
    if keys.kind != "tokens":
        labels = labels_on_call_grid(masks, captured, "key", ignore_index).flatten(1)  # (N, Pk)
        return one_hot_classes(labels, num_classes, ignore_index)
    cover, cover_size = getattr(keys, "cover", None), getattr(keys, "cover_size", None)
    if cover is None or cover_size is None:
        raise ValueError(f"keys that are {getattr(keys, 'what', 'tokens')} cover no pixels: they have no classes")
    onehot = one_hot_classes(labels_on_grid(masks, cover_size).flatten(1), num_classes, ignore_index)  # (N, Pc, K)
    cover = at_least_float32(cover.detach())
    return cover @ onehot.to(cover.dtype)  # (N or 1, Pk, Pc) @ (N, Pc, K) -> (N, Pk, K)


def chance_mass(captured: CapturedAttention, classes: Tensor, rows: Tensor | None = None) -> Tensor:
    """The mass uniform attention over each query's keys puts on each class: mean_{j in K(i)} D_jc for the rows
    ``rows`` (N, Q) -> (N, Q, K), or for every query (None) -> (N, P, K); (N, 1, K) where every query has every key.

    classes: D (N, Pk, K). A per-query key set (CC's cross, ISA's group) averages over the query's keys only: with
    ``rows`` through its mask (O(Q Pk)), for every query through its own kernel with zero logits (O(P K)).
    """
    keys = captured.key_set
    if keys.kind != "subset":
        return classes.mean(dim=1, keepdim=True)  # (N, 1, K)
    if rows is not None:
        mask = keys.mask(rows)
        assert mask is not None  # a subset's mask is never None
        inside = mask.to(classes.dtype)  # (N, Q, Pk)
        return (inside @ classes) / inside.sum(-1, keepdim=True)  # (N, Q, Pk) @ (N, Pk, K) -> (N, Q, K)
    N, P = classes.shape[0], captured.query_size[0] * captured.query_size[1]
    zeros = classes.new_zeros(N, P, 1)  # q_i . k_j = 0: softmax_j uniform over each query's keys
    return keys.attend(zeros, classes.new_zeros(N, classes.shape[1], 1), classes)  # (N, P, K)


def own_class_ratio(mass: Tensor, chance: Tensor, query_labels: Tensor, ignore_index: int = 255) -> Tensor:
    """mass / chance at each labelled query's own class: mass (N, Q, K), chance (N, Q or 1, K), query_labels (N, Q)
    -> one value per labelled query whose class has some chance mass (a class on none of its keys: skipped)."""
    safe = query_labels.masked_fill(query_labels == ignore_index, 0)[..., None]  # (N, Q, 1)
    own_mass = mass.gather(2, safe)[..., 0]
    own_chance = chance.expand_as(mass).gather(2, safe)[..., 0]
    keep = (query_labels != ignore_index) & (own_chance > 0)
    return own_mass[keep] / own_chance[keep]


def _classes(key_labels: Tensor, query_labels: Tensor, ignore_index: int) -> Tensor:
    """(N, Pk) integer key labels -> one-hot rows wide enough for the query labels too; (N, Pk, K) unchanged."""
    if key_labels.is_floating_point():
        return key_labels
    labels = torch.cat([key_labels.flatten(), query_labels.flatten()])
    return one_hot_classes(key_labels, num_classes_of(labels, ignore_index), ignore_index)


def sampled_category_consistency(
    captured: CapturedAttention, query_labels: Tensor, key_labels: Tensor, rows: Tensor, ignore_index: int = 255
) -> Tensor:
    """The pairwise-category consistency (module docstring) of the query rows ``rows`` (N, Q), from the factors:
    O(Q Pk) memory.

    Args:
        captured: one block call with a pairwise term.
        query_labels: (N, P) labels on the query grid.
        key_labels: (N, Pk) integer labels of keys that are pixels, or D (N, Pk, K), each key's class distribution
            (``key_classes``; keys that are not pixels).
        rows: (N, Q) query indices.
        ignore_index: queries with this label are skipped.
    """
    attention = captured.pairwise_attention(rows)  # (N, Q, Pk), 0 outside each query's keys
    if attention is None:
        raise ValueError("pairwise consistency of a block without a pairwise term")
    classes = _classes(key_labels, query_labels, ignore_index).to(attention.device)
    mass = attention @ classes.to(attention.dtype)  # (N, Q, Pk) @ (N, Pk, K) -> (N, Q, K)
    chance = chance_mass(captured, classes.to(attention.dtype), rows)
    return own_class_ratio(mass, chance, torch.gather(query_labels, 1, rows), ignore_index)


def category_consistency(
    captured: CapturedAttention, query_labels: Tensor, key_labels: Tensor, ignore_index: int = 255
) -> Tensor:
    """The pairwise-category consistency (module docstring) of every labelled query, with the block's fused kernel:
    O(P K) memory (the criss-cross: O(P (H + W))).

    The own-class mass of query i is row i of softmax_j(p_ij) @ D: an attention whose values are the keys' class
    distributions (one-hot labels for pixel keys: an ignored key is a zero row, it takes mass but belongs to no
    class). ``key_labels``: (N, Pk) integer labels, or D (N, Pk, K) (``key_classes``).
    """
    classes = _classes(key_labels, query_labels, ignore_index)
    mass = captured.pairwise_mass(classes)  # (N, P, K): sum_j a_ij D_jk
    if mass is None:
        raise ValueError("category consistency of a block without a pairwise term")
    return own_class_ratio(mass, chance_mass(captured, classes.to(mass.dtype)), query_labels, ignore_index)


def key_boundary_band(masks: Tensor, captured: CapturedAttention, radius: int = 1, ignore_index: int = 255) -> Tensor:
    """(N, Pk) bool: the key cells within ``radius`` of a label change of the image (``boundary_band`` on its part
    of the key grid; padding around it lies on no boundary)."""
    top, left, height, width = image_window(captured, "key")
    band = boundary_band(labels_on_grid(masks, (height, width)), radius)  # (N, h, w)
    Hk, Wk = captured.key_size
    if (height, width) != (Hk, Wk):
        band = F.pad(band, (left, Wk - width - left, top, Hk - height - top), value=False)
    return band.flatten(1)


def boundary_consistency(captured: CapturedAttention, key_labels: Tensor, radius: int = 1) -> Tensor:
    """``unary_boundary_consistency`` of one block call: key_labels (N, Hk, Wk) -> one value per image."""
    band = boundary_band(key_labels, radius).flatten(1)  # (N, Pk)
    attention = captured.unary_attention()  # (N, Pk)
    if attention is None:
        raise ValueError("boundary consistency of a block without a unary term")
    return unary_boundary_consistency(attention, band)
