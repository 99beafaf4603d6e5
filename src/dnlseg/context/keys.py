"""Over which keys each query's softmax runs, and where each key lies: what a block declares to the analyses
(docs/science.md section 7). Shape legend: ``dnlseg.context.base``; Q sampled query rows, S keys per group.

Any softmax over keys of q_i . k_j splits as in docs/science.md section 2 -- p_ij + u_j plus terms constant in j --
whatever the keys are; what differs between the heads is the key set of each query:

    GridKeys        every key of the key grid, for every query             NL, DNL, GC, DANet's PAM
    CrissCrossKeys  the query's row and column (itself once): H + W - 1    CCNet
    GroupKeys       the keys of the query's group: S of them               ISA (long range, then short range)
    TokenKeys       keys that are not pixels, each covering some pixels     ANN (pyramid cells), OCR (class regions),
                                                                            EMA (bases), CAM (channels: none)

A key set gives three things: ``mask(rows)``, which keys each of the query rows ``rows`` attends to (None: all);
``restrict(combine)``, the block's ``combine`` restricted to those keys (-inf logits outside them); and ``attend``,
sum_j softmax_j(q_i . k_j) v_j over each query's keys in O(P) memory (O(P (H + W)) for the criss-cross).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from dnlseg.context.attention import fused_attention

KeyKind = Literal["grid", "subset", "tokens"]
Combine = Callable[..., Tensor]  # combine(p (N, Q, Pk), u (N, 1, Pk), rows (N, Q) or None) -> w (N, Q, Pk)


class KeySet:
    """Base: every key for every query (the whole key grid)."""

    kind: ClassVar[KeyKind] = "grid"

    def mask(self, rows: Tensor | None) -> Tensor | None:
        """(N, Q, Pk) bool, True where key j is one of query ``rows[n, q]``'s keys; None: every key of every query."""
        return None

    def restrict(self, combine: Combine) -> Combine:
        """``combine`` with each query's softmax restricted to its keys (the block's ``combine`` is unrestricted)."""
        return combine

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """sum_j softmax_j(q_i . k_j) v_j over query i's keys: q (N, P, Cq), k (N, Pk, Cq), v (N, Pk, Cv) -> (N, P,
        Cv)."""
        return fused_attention(q, k, v, scale=1.0)


@dataclass(frozen=True)
class GridKeys(KeySet):
    """Every query attends to every pixel of the (Hk, Wk) key grid (NL, DNL, GC, PAM)."""

    size: tuple[int, int]


class SubsetKeys(KeySet):
    """Base of the per-query subsets of a pixel grid: ``restrict`` puts -inf on the logits outside ``mask``."""

    kind: ClassVar[KeyKind] = "subset"
    size: tuple[int, int]

    def mask(self, rows: Tensor | None) -> Tensor:
        """(N, Q, Pk) bool, True where key j is one of query ``rows[n, q]``'s keys (a subset: never None)."""
        raise NotImplementedError

    def all_rows(self, batch: int, device: torch.device) -> Tensor:
        positions = self.size[0] * self.size[1]
        return torch.arange(positions, device=device).expand(batch, positions)

    def restrict(self, combine: Combine) -> Combine:
        def restricted(pairwise: Tensor | None, unary: Tensor | None, rows: Tensor | None = None) -> Tensor:
            logits = pairwise if pairwise is not None else unary
            if logits is None:
                raise ValueError("no pairwise and no unary logits: nothing to restrict to each query's keys")
            if rows is None:
                if logits.shape[1] not in (1, self.size[0] * self.size[1]):
                    raise ValueError(
                        f"{logits.shape[1]} query rows of a {self.size} grid: pass the rows they are for "
                        "(combine(p, u, rows)), each query attends to its own keys"
                    )
                rows = self.all_rows(logits.shape[0], logits.device)
            inside = self.mask(rows)  # (N, Q, Pk)
            outside = torch.zeros(inside.shape, dtype=logits.dtype, device=logits.device)
            outside = outside.masked_fill(~inside, float("-inf"))  # 0 on the query's keys, -inf elsewhere
            if pairwise is None:
                return combine(None, logits + outside, rows)  # logits is the unary term
            return combine(pairwise + outside, unary, rows)

        return restricted


@dataclass(frozen=True)
class CrissCrossKeys(SubsetKeys):
    """Query (h, w) attends to row h and column w of the (H, W) grid, itself once (CCNet)."""

    size: tuple[int, int]

    def mask(self, rows: Tensor | None) -> Tensor:
        H, W = self.size
        if rows is None:
            rows = self.all_rows(1, torch.device("cpu"))
        keys = torch.arange(H * W, device=rows.device)
        same_row = (rows // W)[..., None] == (keys // W)  # (N, Q, Pk)
        same_column = (rows % W)[..., None] == (keys % W)
        return same_row | same_column

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return criss_cross_attention(q, k, v, self.size)


@dataclass(frozen=True)
class GroupKeys(SubsetKeys):
    """Query i attends to the S keys of its group (ISA): ``groups`` (P,) the group of each position of the (H, W)
    grid, ``order`` (P,) the positions group by group (group g is ``order[g S:(g + 1) S]``); ``image`` (top, left,
    height, width): where the image lies on this grid (ISA pads the feature map to whole groups)."""

    size: tuple[int, int]
    groups: Tensor
    order: Tensor
    image: tuple[int, int, int, int]

    def mask(self, rows: Tensor | None) -> Tensor:
        if rows is None:
            rows = self.all_rows(1, self.groups.device)
        return self.groups[rows][..., None] == self.groups  # (N, Q, Pk)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return grouped_attention(q, k, v, self.order, self.order.numel() // int(self.groups.max() + 1))


@dataclass(frozen=True)
class TokenKeys(KeySet):
    """Keys that are not pixels: ``what`` they are ("pyramid cells", "class regions", "bases", "channels") and
    ``cover`` (N or 1, Pk, Hc * Wc), the weights of the pixels of the (Hc, Wc) grid ``cover_size`` each key
    averages (every row sums to 1; None where keys cover no pixels, e.g. CAM's channels)."""

    kind: ClassVar[KeyKind] = "tokens"
    what: str
    cover: Tensor | None = None
    cover_size: tuple[int, int] | None = None


def criss_cross_attention(q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int]) -> Tensor:
    """CCNet's attention in O(P (H + W)): each query (h, w) over row h and column w, itself once.

    q, k (N, P, Cq), v (N, P, Cv) on an (H, W) grid -> (N, P, Cv). As mmcv's ``CrissCrossAttention``: the column
    logits carry -inf on the diagonal, one softmax runs over [column, row], the column part is added first.
    """
    N, P, Cq = q.shape
    H, W = size
    q4, k4, v4 = q.view(N, H, W, Cq), k.view(N, H, W, -1), v.view(N, H, W, -1)
    # column w: queries (h, w) against keys (i, w); the diagonal (the query itself) is left to the row
    column = q4.transpose(1, 2) @ k4.permute(0, 2, 3, 1)  # (N, W, H, Cq) @ (N, W, Cq, H) -> (N, W, H, H)
    column = column + torch.full((H,), float("-inf"), dtype=q.dtype, device=q.device).diag()
    row = q4 @ k4.transpose(2, 3)  # (N, H, W, Cq) @ (N, H, Cq, W) -> (N, H, W, W)
    weights = torch.softmax(torch.cat([column.transpose(1, 2), row], dim=-1), dim=-1)  # (N, H, W, H + W)
    y = weights[..., :H].transpose(1, 2) @ v4.transpose(1, 2)  # (N, W, H, H) @ (N, W, H, Cv) -> (N, W, H, Cv)
    y = y.transpose(1, 2) + weights[..., H:] @ v4  # (N, H, W, W) @ (N, H, W, Cv) -> (N, H, W, Cv)
    return y.reshape(N, P, -1)


class Reorder(torch.autograd.Function):
    """t[:, order] of t (N, P, C) for a permutation ``order`` (P,): its backward the same gather by the inverse
    permutation, where autograd's backward of an index scatters with accumulation, about twice as long on CPU."""

    @staticmethod
    def forward(ctx: FunctionCtx, t: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return t[:, order]

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad[:, inverse], None, None


def reorder(t: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
    """t[:, order] for a permutation ``order`` whose inverse is ``inverse``; ``Reorder`` where a gradient flows."""
    if t.requires_grad and torch.is_grad_enabled() and not (torch.jit.is_tracing() or torch.compiler.is_exporting()):
        return Reorder.apply(t, order, inverse)
    return t[:, order]


def grouped_attention(q: Tensor, k: Tensor, v: Tensor, order: Tensor, group: int) -> Tensor:
    """softmax_j(q_i . k_j) v_j within groups of ``group`` positions: q, k (N, P, Cq), v (N, P, Cv) -> (N, P, Cv);
    ``order`` (P,) lists the positions group by group. O(P S) memory: one (S, S) map per group, as mmseg's ISA."""
    N, P, _ = q.shape
    G = P // group
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(P, device=order.device)

    def grouped(t: Tensor) -> Tensor:
        return reorder(t, order, inverse).reshape(N * G, group, t.shape[-1])  # (N, P, C) -> (N G, S, C)

    weights = torch.softmax(grouped(q) @ grouped(k).transpose(1, 2), dim=-1)  # (N G, S, Cq) @ (N G, Cq, S)
    y = (weights @ grouped(v)).reshape(N, P, -1)  # (N G, S, S) @ (N G, S, Cv) -> (N, P, Cv), group by group
    return reorder(y, inverse, order)  # back to raster order
