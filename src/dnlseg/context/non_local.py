"""Non-local block (NL; Wang et al., CVPR 2018), SCIENCE.md section 1.

    q = W_q x,  k = W_k x,  v = W_v x                              each (N, C', P)
    w_ij = softmax_j( q_i . k_j / sqrt(C') )                       embedded Gaussian (default)
    w_ij = q_i . k_j / Pk                                          dot product (no softmax)
    w_ij = softmax_j( x_i . x_j / sqrt(C) )                        Gaussian: q = k = x, no embedding
    y_i  = sum_j w_ij v_j
    out  = x + Norm(W_out y)

Its implicit decomposition (SCIENCE.md section 2), what ``capture_attention`` hands out:

    p_ij = (q_i - mu_q) . (k_j - mu_k) * s        whitened pairwise logit
    u_j  = mu_q . k_j * s                         unary logit
    softmax_j(q_i . k_j * s) == softmax_j(p_ij + u_j)   (the dropped terms are constant in j)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from dnlseg.context.attention import fused_attention, tokens
from dnlseg.context.base import CapturedAttention, check_choice
from dnlseg.context.non_local_base import AttentionPath, NonLocalBase

NonLocalMode = Literal["embedded_gaussian", "dot_product", "gaussian"]
NON_LOCAL_MODES = ("embedded_gaussian", "dot_product", "gaussian")


class NonLocal2d(NonLocalBase):
    """Non-local block, (N, C, H, W) -> (N, C, H, W); the identity at initialisation.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction channels for query, key and value.
        mode: "embedded_gaussian" (softmax of scaled q.k), "dot_product" (q.k / Pk) or "gaussian"
            (softmax of x.x / sqrt(C): no query/key embedding, ``query`` and ``key`` are None).
        attention: "fused" (``F.scaled_dot_product_attention``, no (P, Pk) matrix) or "materialized".
        downsample: 2x2 max-pool of the input of keys and values.
        norm_layer: zero-initialised norm after ``out``; None zero-initialises ``out`` instead.
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        mode: NonLocalMode = "embedded_gaussian",
        attention: AttentionPath = "fused",
        downsample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__(in_channels, reduction, attention, downsample, norm_layer)
        check_choice("mode", mode, NON_LOCAL_MODES)
        self.mode = mode
        if mode == "gaussian":
            self.query = self.key = None
            self.scale = 1.0 / math.sqrt(in_channels)
        else:
            self.query = nn.Conv2d(in_channels, self.channels, 1)  # W_q: C -> C'
            self.key = nn.Conv2d(in_channels, self.channels, 1)  # W_k: C -> C'
            self.scale = 1.0 / math.sqrt(self.channels)

    def combine(self, pairwise_logits: Tensor | None, unary_logits: Tensor | None) -> Tensor:
        """w = softmax_j(p_ij + u_j) -- the terms MULTIPLY (embedded Gaussian and Gaussian modes; in dot-product
        mode w = q.k / Pk is not a function of p and u, and its ``CapturedAttention.combine`` is None)."""
        return torch.softmax(pairwise_logits + unary_logits, dim=-1)

    def embed(self, x: Tensor, xk: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (N, P, Cq) from x, k and v (N, Pk, Cq / C') from the key input xk; Cq = C' (C in Gaussian mode)."""
        if self.mode == "gaussian":
            return tokens(x), tokens(xk), tokens(self.value(xk))
        return tokens(self.query(x)), tokens(self.key(xk)), tokens(self.value(xk))

    def forward(self, x: Tensor) -> Tensor:
        xk = self.key_input(x)
        q, k, v = self.embed(x, xk)
        if self.mode == "dot_product" and self.materialize:
            y = (q @ k.transpose(1, 2) / k.shape[1]) @ v  # (N, P, Pk) @ (N, Pk, C') -> (N, P, C')
        elif self.mode == "dot_product":
            # Associativity: (q k^T) v / Pk == q (k^T v) / Pk, O(P C'^2) instead of O(P^2 C').
            y = q @ (k.transpose(1, 2) @ v) / k.shape[1]  # (N, P, C') @ (N, C', C') -> (N, P, C')
        elif self.materialize:
            w = torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)  # (N, P, Cq) @ (N, Cq, Pk) -> (N, P, Pk)
            y = w @ v  # (N, P, Pk) @ (N, Pk, C') -> (N, P, C')
        else:
            # softmax_j(q_i . k_j * s) v_j, never building (P, Pk): (N, 1, P, C') heads of one.
            y = fused_attention(q, k, v, scale=self.scale)
        self.publish(lambda: self.decompose(q, k, v, y, tuple(x.shape[-2:]), tuple(xk.shape[-2:])))
        return self.residual(x, y)

    def decompose(self, q: Tensor, k: Tensor, v: Tensor, y: Tensor, query_size, key_size) -> CapturedAttention:
        """The factors of p_ij = (q_i - mu_q).(k_j - mu_k) s and u_j = mu_q . k_j s from q (N, P, Cq), k (N, Pk, Cq)."""
        mu_q = q.mean(dim=1, keepdim=True)  # (N, 1, Cq)
        mu_k = k.mean(dim=1, keepdim=True)  # (N, 1, Cq)
        # Out of place: mmseg's in-place ``-=`` here breaks autograd on newer PyTorch.
        unary = mu_q @ k.transpose(1, 2) * self.scale  # (N, 1, Cq) @ (N, Cq, Pk) -> (N, 1, Pk)
        combine = None if self.mode == "dot_product" else self.combine
        return CapturedAttention((q - mu_q) * self.scale, k - mu_k, unary, v, y, query_size, key_size, combine)
