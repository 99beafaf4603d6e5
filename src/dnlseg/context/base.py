"""The one contract between context blocks and everything that analyses them.

Shape legend used throughout ``dnlseg.context``:
    N  batch size
    C  input channels,  C' = C // reduction  embedding channels,  Cq  query/key channels (C', or C for Gaussian NL)
    H, W   query grid,  P  = H * W  query positions
    Hk, Wk key grid,    Pk = Hk * Wk key/value positions (P, or about P / 4 with ``downsample``)

A context block (``ContextBlock``) maps (N, C, H, W) -> (N, C, H, W) and is the identity at initialisation. Its
attention is written as the decomposition of docs/science.md section 2:

    p_ij = pairwise_query_i . pairwise_key_j          pairwise logits  (N, P, Pk)  -- never built by the contract
    u_j                                               unary logits     (N, 1, Pk)
    w_ij = block.combine(p, u)                        the weights applied to the values, row by row
    y_i  = sum_j w_ij v_j                             the attention output

What analyses may rely on, and nothing else:

1. ``block.branches()``: its parameters by the paper's branch names (``query``, ``key``, ``value``, ``unary``,
   ``out``), for per-branch gradient norms.
2. ``block.combine(p, u)``: w as a function of the logits (None for a block whose weights are not one, e.g.
   dot-product NL). It is row-wise: the rows of w for some queries need only those rows of p.
3. ``capture_attention(model)``: while it is open, every forward call of every block in ``model`` appends a
   ``CapturedAttention`` -- the factors of that call, O(P) memory -- to ``captured[<block name>]``. Blocks build
   the factors only when a capture is open; outputs are unchanged. Everything an analysis needs (rows of p and w,
   the unary map, the attention mass on a set of keys, gradients through y) is computed from the factors, so
   analyses run at whole-image size (P = 32768) without the P x Pk matrix.

No analysis sets a block attribute or reads a private one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.attention import fused_attention

Combine = Callable[[Tensor | None, Tensor | None], Tensor]
BRANCHES = ("query", "key", "value", "unary", "out")  # the paper's names, in display order


@dataclass
class CapturedAttention:
    """The attention of one block call, as factors: O(P) memory, enough for every analysis.

    The tensors are those of the forward pass (in its autograd graph when it had one), so e.g.
    ``torch.autograd.grad(loss, captured.output)`` gives dL/dy, and dL/dw_ij = dL/dy_i . v_j.

    Attributes:
        pairwise_query: (N, P, Cq) with the logit scale folded in, so p_ij = pairwise_query_i . pairwise_key_j;
            None for a block without a pairwise term.
        pairwise_key: (N, Pk, Cq), or None.
        unary_logits: u, (N, 1, Pk), or None for a block without a unary term.
        values: v, (N, Pk, Cv).
        output: y_i = sum_j w_ij v_j, (N, P, Cv) -- (N, 1, Cv) when every query gets the same vector
            (unary-only blocks).
        query_size: (H, W).
        key_size: (Hk, Wk).
        combine: the block's ``combine`` (None when w is not a function of p and u).
    """

    pairwise_query: Tensor | None
    pairwise_key: Tensor | None
    unary_logits: Tensor | None
    values: Tensor
    output: Tensor
    query_size: tuple[int, int]
    key_size: tuple[int, int]
    combine: Combine | None

    def pairwise_logits(self, rows: Tensor | None = None) -> Tensor | None:
        """p for the query rows ``rows`` (N, Q) -> (N, Q, Pk); all rows when None (materialises (N, P, Pk))."""
        if self.pairwise_query is None or self.pairwise_key is None:
            return None
        q = self.pairwise_query if rows is None else select_rows(self.pairwise_query, rows)  # (N, Q, Cq)
        return q @ self.pairwise_key.transpose(1, 2)  # (N, Q, Cq) @ (N, Cq, Pk) -> (N, Q, Pk)

    def pairwise_attention(self, rows: Tensor | None = None) -> Tensor | None:
        """a_ij = softmax_j(p_ij) for the rows ``rows`` (N, Q) -> (N, Q, Pk), float32 or wider."""
        logits = self.pairwise_logits(rows)
        return None if logits is None else torch.softmax(at_least_float32(logits), dim=-1)

    def unary_attention(self) -> Tensor | None:
        """s_j = softmax_j(u_j), (N, Pk), float32 or wider."""
        return None if self.unary_logits is None else torch.softmax(at_least_float32(self.unary_logits[:, 0]), dim=-1)

    def weights(self, rows: Tensor | None = None) -> Tensor:
        """w for the rows ``rows`` (N, Q) -> (N, Q, Pk) (all rows when None), from ``combine``."""
        if self.combine is None:
            raise ValueError("this block's weights are not a function of its pairwise and unary logits")
        return self.combine(self.pairwise_logits(rows), self.unary_logits)

    def pairwise_mass(self, key_values: Tensor) -> Tensor | None:
        """sum_j softmax_j(p_ij) V_jk for every query i, with the fused kernel: V (N, Pk, K) -> (N, P, K).

        With V the one-hot labels of the keys this is the pairwise attention mass of every query on every class,
        in O(P K) memory.
        """
        if self.pairwise_query is None or self.pairwise_key is None:
            return None
        q = at_least_float32(self.pairwise_query)
        return fused_attention(q, self.pairwise_key.to(q.dtype), key_values.to(q.dtype), scale=1.0)


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or in its own dtype when that is wider (float64 factors keep float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def select_rows(t: Tensor, rows: Tensor) -> Tensor:
    """t (N, P, C), rows (N, Q) indices -> (N, Q, C)."""
    return torch.gather(t, 1, rows[..., None].expand(-1, -1, t.shape[-1]))


class ContextBlock(nn.Module):
    """Base of every context block: the analysis contract of the module docstring.

    Subclasses implement ``forward`` and ``combine``, name their branch submodules as in the paper (``BRANCHES``;
    ``branch_modules`` maps a branch to its submodules or parameters, e.g. ``out`` to ``("out", "out_norm")``) and call
    ``self.publish(make)`` once per forward with a function building the call's ``CapturedAttention``.
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self) -> None:
        super().__init__()
        self._sinks: list[Callable[[CapturedAttention], None]] = []  # open captures; only capture_attention edits it

    def combine(self, pairwise_logits: Tensor | None, unary_logits: Tensor | None) -> Tensor | None:
        """w_ij from p (N, Q, Pk) and u (N, 1, Pk), row-wise; None if this block's weights are not such a function."""
        raise NotImplementedError

    def branches(self) -> dict[str, list[nn.Parameter]]:
        """{"query": [...], "key": [...], ...}: the trainable parameters of each branch the block has."""
        found: dict[str, list[nn.Parameter]] = {}
        for branch in BRANCHES:
            for attribute in self.branch_modules.get(branch, (branch,)):
                part = getattr(self, attribute, None)  # a submodule, or a parameter of the block itself
                params = [part] if isinstance(part, nn.Parameter) else part.parameters() if part is not None else []
                found.setdefault(branch, []).extend(p for p in params if p.requires_grad)
        return {branch: params for branch, params in found.items() if params}

    def publish(self, make: Callable[[], CapturedAttention]) -> None:
        """Hand this call's factors to the open captures; ``make`` runs only when one is open."""
        if self._sinks:
            captured = make()
            for sink in self._sinks:
                sink(captured)


def find_context_blocks(module: nn.Module) -> dict[str, ContextBlock]:
    """Every context block inside ``module`` by its name relative to the network (``decode_head.context``).

    A LightningModule's ``network.`` prefix is dropped, so names are the same for the module and its network.
    """
    return {name.removeprefix("network."): m for name, m in module.named_modules() if isinstance(m, ContextBlock)}


@contextmanager
def capture_attention(module: nn.Module, max_calls: int | None = None) -> Iterator[dict[str, list[CapturedAttention]]]:
    """``with capture_attention(model) as captured: model(x)`` -> ``captured[block name]``: one entry per call.

    Args:
        module: a block, a network or a LightningModule; every ``ContextBlock`` inside it is captured.
        max_calls: keep only the first this many calls of each block (e.g. 1: the first scale of a multi-scale
            inference); None: all.

    Captures nest (each gets every call). The captured tensors are those of the forward: under ``no_grad`` they
    hold no graph; with gradients on they keep the graph alive until the dict is dropped.
    """
    blocks = find_context_blocks(module)
    captured: dict[str, list[CapturedAttention]] = {name: [] for name in blocks}

    def sink_of(calls: list[CapturedAttention]) -> Callable[[CapturedAttention], None]:
        def sink(record: CapturedAttention) -> None:
            if max_calls is None or len(calls) < max_calls:
                calls.append(record)

        return sink

    sinks = {name: sink_of(captured[name]) for name in blocks}
    for name, block in blocks.items():
        block._sinks.append(sinks[name])
    try:
        yield captured
    finally:
        for name, block in blocks.items():
            block._sinks.remove(sinks[name])


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


__all__ = [
    "BRANCHES",
    "CapturedAttention",
    "ContextBlock",
    "capture_attention",
    "check_choice",
    "find_context_blocks",
    "select_rows",
]
