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
    w_ij = combine(p, u, rows)                        the weights applied to the values, row by row
    y_i  = sum_j w_ij v_j                             the attention output, j over query i's keys

What analyses may rely on, and nothing else:

1. ``block.branches()``: its parameters by the paper's branch names (``query``, ``key``, ``value``, ``unary``,
   ``out``), for per-branch gradient norms.
2. ``block.combine(p, u, rows)``: w as a function of the logits of the query rows ``rows`` (None for a block
   whose weights are not one, e.g. dot-product NL). It is row-wise: the rows of w for some queries need only those
   rows of p. The record's ``combine`` is restricted to each query's keys (``CapturedAttention.keys``).
3. ``capture_attention(model)``: while it is open, every forward call of every block in ``model`` appends a
   ``CapturedAttention`` -- the factors of that call, O(P) memory -- to ``captured[<block name>]``. Blocks build
   the factors only when a capture is open; outputs are unchanged. Everything an analysis needs (rows of p and w,
   the unary map, the attention mass on a set of keys, gradients through y) is computed from the factors, so
   analyses run at whole-image size (P = 32768) without the P x Pk matrix (CCNet: O(P (H + W))).
4. ``CapturedAttention.keys`` (``dnlseg.context.keys``): over which keys each query's softmax runs -- the whole
   key grid (NL, DNL, PAM), a per-query subset of it (CC: the query's row and column; ISA: its group), or keys that
   are not pixels (ANN: pyramid cells; OCR: class regions; EMA: bases) with the pixels each of them covers.
5. ``block.attention_paths``: the values its ``attention`` argument takes ("fused" first: no (P, Pk) map;
   "materialized": the map built, a reference); empty for a block with one way to compute.
6. ``block.undefined_analyses``: {analysis: why it has no meaning for this block} for the ``ANALYSES`` that do not
   apply (CAM's keys are channels, EMA's attention carries no gradient); an analysis reports the reason instead
   of a number.

No analysis sets a block attribute or reads a private one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import inf
from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.keys import Combine, GridKeys, KeySet

BRANCHES = ("query", "key", "value", "unary", "out")  # the paper's names, in display order
# What the analyses compute from a block (docs/science.md section 7); a block names those without meaning for it.
ANALYSES = (
    "branch_gradients",  # per-branch gradient norms
    "logit_gradients",  # dL/dp and dL/du (the separation probe)
    "cross_sensitivity",  # the change of dL/du under a change of p
    "attention_maps",  # each query's weights painted on the image
    "category_consistency",  # pairwise attention mass on the query's own class
    "boundary_consistency",  # unary attention mass on class boundaries
)


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
        query_size: (H, W), the grid of the queries (P = H W rows; CAM: its C channels are the rows).
        key_size: (Hk, Wk), the grid of the keys; (Pk, 1) for keys that are not pixels.
        combine: ``combine(p, u, rows=None) -> w`` restricted to each query's keys (None when w is not a function
            of p and u); ``rows`` (N, Q) the query rows p holds, None: all P rows in order.
        keys: over which keys each query's softmax runs and where each key lies (``dnlseg.context.keys``); None: the
            whole ``key_size`` grid.
        queries: what the rows are: "pixels" of ``query_size``, or "channels" (CAM).
    """

    pairwise_query: Tensor | None
    pairwise_key: Tensor | None
    unary_logits: Tensor | None
    values: Tensor
    output: Tensor
    query_size: tuple[int, int]
    key_size: tuple[int, int]
    combine: Combine | None
    keys: KeySet | None = None
    queries: str = "pixels"

    def __post_init__(self) -> None:
        if self.keys is None:
            self.keys = GridKeys(self.key_size)

    @property
    def key_set(self) -> KeySet:
        """``keys``, never None (``__post_init__`` fills in the whole key grid)."""
        return self.keys if self.keys is not None else GridKeys(self.key_size)

    def pairwise_logits(self, rows: Tensor | None = None) -> Tensor | None:
        """p for the query rows ``rows`` (N, Q) -> (N, Q, Pk); all rows when None (materialises (N, P, Pk))."""
        if self.pairwise_query is None or self.pairwise_key is None:
            return None
        q = self.pairwise_query if rows is None else select_rows(self.pairwise_query, rows)  # (N, Q, Cq)
        return q @ self.pairwise_key.transpose(1, 2)  # (N, Q, Cq) @ (N, Cq, Pk) -> (N, Q, Pk)

    def pairwise_attention(self, rows: Tensor | None = None) -> Tensor | None:
        """a_ij = softmax_j(p_ij) over query i's keys (0 elsewhere) for the rows ``rows`` (N, Q) -> (N, Q, Pk),
        float32 or wider."""
        logits = self.pairwise_logits(rows)
        if logits is None:
            return None
        inside = self.key_set.mask(rows)  # (N, Q, Pk) or None: every key
        logits = at_least_float32(logits)
        if inside is not None:
            logits = logits.masked_fill(~inside.to(logits.device), -inf)
        return torch.softmax(logits, dim=-1)

    def unary_attention(self) -> Tensor | None:
        """s_j = softmax_j(u_j), (N, Pk), float32 or wider."""
        return None if self.unary_logits is None else torch.softmax(at_least_float32(self.unary_logits[:, 0]), dim=-1)

    def weights(self, rows: Tensor | None = None) -> Tensor:
        """w for the rows ``rows`` (N, Q) -> (N, Q, Pk) (all rows when None), from ``combine``; 0 outside each
        query's keys."""
        if self.combine is None:
            raise ValueError("this block's weights are not a function of its pairwise and unary logits")
        return self.combine(self.pairwise_logits(rows), self.unary_logits, rows)

    def key_mask(self, rows: Tensor | None = None) -> Tensor | None:
        """(N, Q, Pk) bool: the keys of each query row (all rows when None); None when every query has every key."""
        return self.key_set.mask(rows)

    def pairwise_mass(self, key_values: Tensor) -> Tensor | None:
        """sum_j softmax_j(p_ij) V_jk over query i's keys for every query i, with the block's kernel: V (N, Pk, K)
        -> (N, P, K).

        With V the one-hot labels of the keys (for keys that are not pixels: ``keys.cover`` @ the one-hot labels,
        each key's label distribution) this is the pairwise attention mass of every query on every class, in O(P K)
        memory (the criss-cross: O(P (H + W))).
        """
        if self.pairwise_query is None or self.pairwise_key is None:
            return None
        q = at_least_float32(self.pairwise_query)
        return self.key_set.attend(q, self.pairwise_key.to(q.dtype), key_values.to(q.dtype))


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32, or in its own dtype when that is wider (float64 factors keep float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def implicit_split(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    y: Tensor,
    query_size: tuple[int, int],
    key_size: tuple[int, int],
    combine: Combine | None,
    keys: KeySet | None = None,
    queries: str = "pixels",
) -> CapturedAttention:
    """The factors of a softmax over q_i . k_j, split as in docs/science.md section 2:

        p_ij = (q_i - mu_q) . (k_j - mu_k),   u_j = mu_q . k_j         mu: means over all queries / all keys

    q (N, P, Cq) with the logit scale folded in, k (N, Pk, Cq), v (N, Pk, Cv), y (N, P, Cv). The dropped terms
    (q_i . mu_k - mu_q . mu_k) are constant in j, so they cancel in every query's softmax, whatever its key set.
    Out of place: mmseg's in-place ``-=`` here breaks autograd on newer PyTorch.
    """
    mu_q, mu_k = q.mean(dim=1, keepdim=True), k.mean(dim=1, keepdim=True)  # (N, 1, Cq)
    unary = mu_q @ k.transpose(1, 2)  # (N, 1, Cq) @ (N, Cq, Pk) -> (N, 1, Pk)
    return CapturedAttention(q - mu_q, k - mu_k, unary, v, y, query_size, key_size, combine, keys, queries)


def select_rows(t: Tensor, rows: Tensor) -> Tensor:
    """t (N, P, C), rows (N, Q) indices -> (N, Q, C)."""
    return torch.gather(t, 1, rows[..., None].expand(-1, -1, t.shape[-1]))


class ContextBlock(nn.Module):
    """Base of every context block: the analysis contract of the module docstring.

    Subclasses implement ``forward`` and ``combine``, name their branch submodules as in the paper (``BRANCHES``;
    ``branch_modules`` maps a branch to its submodules or parameters, e.g. ``out`` to ``("out", "out_norm")``) and call
    ``self.publish(make)`` once per attention with a function building the call's ``CapturedAttention``. They declare
    ``attention_paths`` (the values of their ``attention`` argument, none if they have one path),
    ``undefined_analyses`` (``ANALYSES`` without meaning for them, with the reason), ``mmseg_names`` (our state-dict
    prefix -> mmsegmentation 1.2.2's, relative to the block; ``from_mmseg`` renames a state dict with it) and, for a
    block that mmseg's FCNHead-layout heads hold (NLHead, DNLHead, GCHead, CCHead), ``mmseg_attribute``: its name on
    that head (``nl_block``, ``dnl_block``, ``gc_block``, ``cca``), what ``ContextHead`` maps its ``context`` to.
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {}
    attention_paths: ClassVar[tuple[str, ...]] = ()
    undefined_analyses: ClassVar[dict[str, str]] = {}
    mmseg_names: ClassVar[dict[str, str]] = {}
    mmseg_attribute: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._sinks: list[Callable[[CapturedAttention], None]] = []  # open captures; only capture_attention edits it

    def combine(
        self, pairwise_logits: Tensor | None, unary_logits: Tensor | None, rows: Tensor | None = None
    ) -> Tensor | None:
        """w_ij from p (N, Q, Pk) and u (N, 1, Pk) of the query rows ``rows`` (N, Q) (None: all rows), row-wise;
        None if this block's weights are not such a function."""
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

    @property
    def capturing(self) -> bool:
        """Whether a capture is open: what ``publish`` hands it may still be read after the forward."""
        return bool(self._sinks)

    def publish(self, make: Callable[[], CapturedAttention]) -> None:
        """Hand this call's factors to the open captures; ``make`` runs only when one is open."""
        if self._sinks:
            captured = make()
            for sink in self._sinks:
                sink(captured)


class CoupledAttention(ContextBlock):
    """Base of the blocks whose weights are one softmax of q_i . k_j: w_ij = softmax_j(p_ij + u_j), the pairwise and
    unary terms multiplied (docs/science.md section 2) -- PAM, CAM, CC, ANN, ISA, OCR, EMA."""

    def combine(
        self, pairwise_logits: Tensor | None, unary_logits: Tensor | None, rows: Tensor | None = None
    ) -> Tensor:
        """w = softmax_j(p_ij + u_j) over the block's keys (the record's ``combine`` restricts a per-query key set)."""
        if pairwise_logits is None or unary_logits is None:
            raise ValueError(f"{type(self).__name__}'s weights need its pairwise and its unary logits")
        return torch.softmax(pairwise_logits + unary_logits, dim=-1)


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


def from_mmseg(block: ContextBlock, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """mmseg's state dict of the module(s) ``block`` mirrors -> ``block``'s keys, through ``block.mmseg_names``
    (each our prefix -> mmseg's, longest first); keys that map to none of ours are dropped."""
    renamed = {}
    ours = block.state_dict().keys()
    for mine, theirs in sorted(block.mmseg_names.items(), key=lambda item: -len(item[0])):
        for key in ours:
            if key == mine or key.startswith(mine + "."):
                source = theirs + key[len(mine) :]
                if source in state_dict and key not in renamed:
                    renamed[key] = state_dict[source]
    return renamed


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


__all__ = [
    "ANALYSES",
    "BRANCHES",
    "CapturedAttention",
    "ContextBlock",
    "CoupledAttention",
    "capture_attention",
    "check_choice",
    "find_context_blocks",
    "from_mmseg",
    "implicit_split",
    "select_rows",
]
