"""Non-local block (NL; Wang et al., CVPR 2018), docs/science.md section 1.

    q = W_q x,  k = W_k x,  v = W_v x                              each (N, C', P)
    w_ij = softmax_j( q_i . k_j / sqrt(C') )                       embedded Gaussian (default)
    w_ij = q_i . k_j / Pk                                          dot product (no softmax)
    w_ij = softmax_j( x_i . x_j / sqrt(C) )                        Gaussian: q = k = x, no embedding
    y_i  = sum_j w_ij v_j
    out  = x + Norm(W_out y)

Its implicit decomposition (docs/science.md section 2), what ``capture_attention`` hands out:

    p_ij = (q_i - mu_q) . (k_j - mu_k) * s        whitened pairwise logit
    u_j  = mu_q . k_j * s                         unary logit
    softmax_j(q_i . k_j * s) == softmax_j(p_ij + u_j)   (the dropped terms are constant in j)

Options of the authors' code (docs/science.md section 6.2), off by default: ``whitening`` of q and k before their
product, a ``temperature`` (s = 1 / (sqrt(C') tau)), learned in either form, ``fixbug=False`` (s = sqrt(C') / tau),
``use_out=False``, and ``global_context=True`` -- the mmdetection fork's "gcb": a GCNet block's transform output
added beside the non-local branch, out = x + Norm(W_out y) + t(x).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from dnlseg.context.attention import fused_attention, tokens
from dnlseg.context.base import CapturedAttention, check_choice
from dnlseg.context.global_context import GlobalContext2d
from dnlseg.context.logit_scale import LogitScale, TemperatureForm
from dnlseg.context.non_local_base import AttentionPath, NonLocalBase
from dnlseg.context.whitening import Whiten, WhiteningKind

NonLocalMode = Literal["embedded_gaussian", "dot_product", "gaussian"]
NON_LOCAL_MODES = ("embedded_gaussian", "dot_product", "gaussian")


class NonLocal2d(NonLocalBase):
    """Non-local block, (N, C, H, W) -> (N, C, H, W); the identity at initialisation.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction channels for query, key and value.
        mode: "embedded_gaussian" (softmax of scaled q.k), "dot_product" (q.k / Pk) or "gaussian"
            (softmax of x.x / sqrt(C): no query/key embedding, ``query`` and ``key`` are None).
        whitening: None (plain NL), or a whitening of q and k before their product (``dnlseg.context.whitening``).
        temperature: tau > 0 dividing the logits (1: plain NL).
        learn_temperature: make tau a trained parameter.
        temperature_form: "log" or "softplus" (the mmdetection fork's ``logits * softplus(t)``; learned only).
        fixbug: True scales the logits by 1/sqrt(Cq); False by sqrt(Cq) (runs made without the fork's fix).
        use_out: False: the value maps C -> C and there is no output conv (an official-code option).
        global_context: add a GCNet block's transform output beside the non-local branch (the fork's "gcb"); it is
            a ``GlobalContext2d`` of its own (``global_context``), seen by the analyses as a block.
        attention: "fused" (``F.scaled_dot_product_attention``, no (P, Pk) matrix) or "materialized".
        downsample: 2x2 max-pool of the input of keys and values.
        norm_layer: zero-initialised norm after ``out``; None zero-initialises ``out`` instead.
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        mode: NonLocalMode = "embedded_gaussian",
        whitening: WhiteningKind | None = None,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        temperature_form: TemperatureForm = "log",
        fixbug: bool = True,
        use_out: bool = True,
        global_context: bool = False,
        attention: AttentionPath = "fused",
        downsample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__(in_channels, reduction, attention, downsample, norm_layer, use_out)
        check_choice("mode", mode, NON_LOCAL_MODES)
        if mode == "dot_product" and (whitening or temperature != 1.0 or learn_temperature):
            raise ValueError("mode='dot_product' has no softmax: whitening and temperature apply to the other modes")
        self.mode = mode
        self.query: nn.Conv2d | None = None  # Gaussian mode: no embedding, q = x and k = x
        self.key: nn.Conv2d | None = None
        if mode == "gaussian":
            key_channels = in_channels
        else:
            self.query = nn.Conv2d(in_channels, self.channels, 1)  # W_q: C -> C'
            self.key = nn.Conv2d(in_channels, self.channels, 1)  # W_k: C -> C'
            key_channels = self.channels
        self.logit_scale = LogitScale(key_channels, temperature, learn_temperature, temperature_form, fixbug)
        self.query_whiten = Whiten(whitening, key_channels) if whitening else None
        self.key_whiten = Whiten(whitening, key_channels) if whitening else None
        self.global_context = GlobalContext2d(in_channels) if global_context else None

    branch_modules = {"query": ("query", "query_whiten"), "key": ("key", "key_whiten"), "out": ("out", "out_norm")}
    mmseg_attribute = "nl_block"  # NLHead's

    def combine(
        self, pairwise_logits: Tensor | None, unary_logits: Tensor | None, rows: Tensor | None = None
    ) -> Tensor:
        """w = softmax_j(p_ij + u_j) -- the terms MULTIPLY (embedded Gaussian and Gaussian modes; in dot-product
        mode w = q.k / Pk is not a function of p and u, and its ``CapturedAttention.combine`` is None)."""
        if pairwise_logits is None or unary_logits is None:
            raise ValueError("NL's weights need its pairwise and its unary logits")
        return torch.softmax(pairwise_logits + unary_logits, dim=-1)

    def embed(self, x: Tensor, xk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (N, P, Cq) from x, k and v (N, Pk, Cq / Cv) from the key input xk; Cq = C' (C in Gaussian mode).

        q and k are whitened when ``whitening`` is set; the logit scale is not applied here.
        """
        if self.query is None or self.key is None:  # Gaussian mode
            q, k = tokens(x), tokens(xk)
        else:
            q, k = tokens(self.query(x)), tokens(self.key(xk))
        if self.query_whiten is not None and self.key_whiten is not None:
            q, k = self.query_whiten(q), self.key_whiten(k)
        return q, k, tokens(self.value(xk))

    def forward(self, x: Tensor) -> Tensor:
        xk = self.key_input(x)
        q, k, v = self.embed(x, xk)
        if self.mode == "dot_product" and self.materialize:
            y = (q @ k.transpose(1, 2) / k.shape[1]) @ v  # (N, P, Pk) @ (N, Pk, Cv) -> (N, P, Cv)
        elif self.mode == "dot_product":
            # Associativity: (q k^T) v / Pk == q (k^T v) / Pk, O(P C'^2) instead of O(P^2 C').
            y = q @ (k.transpose(1, 2) @ v) / k.shape[1]  # (N, P, C') @ (N, C', Cv) -> (N, P, Cv)
        else:
            q = q * self.logit_scale()  # the scale folded into q: it may be a learned tensor
            if self.materialize:
                w = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (N, P, Cq) @ (N, Cq, Pk) -> (N, P, Pk)
                y = w @ v  # (N, P, Pk) @ (N, Pk, Cv) -> (N, P, Cv)
            else:
                # softmax_j(q_i . k_j * s) v_j, never building (P, Pk): (N, 1, P, Cq) heads of one.
                y = fused_attention(q, k, v, scale=1.0)
        self.publish(lambda: self.decompose(q, k, v, y, tuple(x.shape[-2:]), tuple(xk.shape[-2:])))
        out = self.residual(x, y)
        return out if self.global_context is None else out + self.global_context.transform(x)

    def decompose(self, q: Tensor, k: Tensor, v: Tensor, y: Tensor, query_size, key_size) -> CapturedAttention:
        """The factors of p_ij = (q_i - mu_q).(k_j - mu_k) and u_j = mu_q . k_j from q (N, P, Cq) -- already
        scaled, except in dot-product mode -- and k (N, Pk, Cq)."""
        mu_q = q.mean(dim=1, keepdim=True)  # (N, 1, Cq)
        mu_k = k.mean(dim=1, keepdim=True)  # (N, 1, Cq)
        # Out of place: mmseg's in-place ``-=`` here breaks autograd on newer PyTorch.
        unary = mu_q @ k.transpose(1, 2)  # (N, 1, Cq) @ (N, Cq, Pk) -> (N, 1, Pk)
        combine = None if self.mode == "dot_product" else self.combine
        return CapturedAttention(q - mu_q, k - mu_k, unary, v, y, query_size, key_size, combine)
