"""Disentangled Non-Local block (DNL; Yin et al., ECCV 2020), SCIENCE.md sections 2-3.

    q = W_q x,  k = W_k x,  v = W_v x                            each (N, C', P)
    p_ij = (q_i - mu_q) . (k_j - mu_k) / (sqrt(C') * tau)        whitened pairwise logit
    m_j  = W_m x  (unary="conv")   or   mu_q . k_j / sqrt(C')  (unary="shared_key")
    w_ij = softmax_j(p_ij) + softmax_j(m_j)                      the two terms are ADDED
    y_i  = sum_j w_ij v_j = sum_j softmax_j(p_ij) v_j  +  sum_j softmax_j(m_j) v_j
                            `------ pairwise part ----'   `- one vector for every i -'
    out  = x + Norm(W_out y)

The variants of SCIENCE.md section 3 are keyword arguments:
    DNL (paper)      pairwise=True,  unary="conv"
    DNL, shared key  pairwise=True,  unary="shared_key"
    pairwise NL      pairwise=True,  unary=None
    unary NL         pairwise=False, unary="conv"
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from dnlseg.context.base import AttentionMaps, AttentionPath, ContextBlock, check_choice, fused_attention, tokens

UnarySource = Literal["conv", "shared_key"]
UNARY_SOURCES = ("conv", "shared_key")


class DisentangledNonLocal2d(ContextBlock):
    """Disentangled non-local block, (N, C, H, W) -> (N, C, H, W); the identity at initialisation.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction channels for query, key and value.
        temperature: tau > 0 dividing the whitened pairwise logits (0.05 in the paper's code and mmseg).
        learn_temperature: make tau a trained parameter (kept positive through its logarithm).
        pairwise: include the whitened pairwise term (False: the "unary NL" ablation).
        unary: source of the unary logits: "conv" (a separate 1x1 conv C -> 1, the paper's block),
            "shared_key" (mu_q . k_j / sqrt(C'), a paper ablation) or None (the "pairwise NL" ablation).
        attention: "fused" (``F.scaled_dot_product_attention``, no (P, Pk) matrix) or "materialized".
        downsample: 2x2 max-pool of the input of keys, values and unary logits.
        norm_layer: zero-initialised norm after ``out``; None zero-initialises ``out`` instead.
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        pairwise: bool = True,
        unary: UnarySource | None = "conv",
        attention: AttentionPath = "fused",
        downsample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__(in_channels, reduction, attention, downsample, norm_layer)
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (the paper uses 0.05)")
        if unary is not None:
            check_choice("unary", unary, UNARY_SOURCES)
        if not pairwise and unary is None:
            raise ValueError("pairwise=False with unary=None leaves no attention term: enable one of them")
        if not pairwise and unary == "shared_key":
            raise ValueError("unary='shared_key' needs the pairwise query/key: use unary='conv' with pairwise=False")
        self.has_pairwise = pairwise
        self.unary_source = unary
        self.scale = 1.0 / math.sqrt(self.channels)

        log_tau = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_tau)
        else:  # a fixed tau is configuration, not state: not in checkpoints (mmseg's hold none either)
            self.register_buffer("log_temperature", log_tau, persistent=False)

        self.query = nn.Conv2d(in_channels, self.channels, 1) if pairwise else None  # W_q: C -> C'
        self.key = nn.Conv2d(in_channels, self.channels, 1) if pairwise else None  # W_k: C -> C'
        self.unary = nn.Conv2d(in_channels, 1, 1) if unary == "conv" else None  # W_m: C -> 1

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()

    @staticmethod
    def combine(pairwise_logits: Tensor | None, unary_logits: Tensor | None) -> Tensor:
        """w_ij = softmax_j(p_ij) + softmax_j(u_j) -- each term normalised on its own, then ADDED."""
        terms = [torch.softmax(t, dim=-1) for t in (pairwise_logits, unary_logits) if t is not None]
        return terms[0] + terms[1] if len(terms) == 2 else terms[0]

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        xk = self.key_input(x)
        v = tokens(self.value(xk))  # (N, Pk, C')
        q = k = mean_query = raw_key = None
        if self.has_pairwise:
            raw_query, raw_key = tokens(self.query(x)), tokens(self.key(xk))  # (N, P, C'), (N, Pk, C')
            mean_query = raw_query.mean(dim=1, keepdim=True)  # mu_q (N, 1, C')
            # Whitened, out of place (mmseg's in-place ``-=`` breaks autograd on newer PyTorch);
            # q carries the logit scale 1 / (sqrt(C') tau) so tau may be a learned tensor.
            q = (raw_query - mean_query) * (self.scale / self.temperature)  # (N, P, C')
            k = raw_key - raw_key.mean(dim=1, keepdim=True)  # (N, Pk, C')
        unary = self.unary_logits(xk, mean_query, raw_key)  # (N, 1, Pk) or None

        if self.materialize:
            pairwise = q @ k.transpose(1, 2) if q is not None else None  # (N, P, C') @ (N, C', Pk) -> (N, P, Pk)
            maps = AttentionMaps(self.combine(pairwise, unary), pairwise, unary, (H, W), tuple(xk.shape[-2:]))
            self.record(maps)
            y = maps.weights @ v  # (N, P or 1, Pk) @ (N, Pk, C') -> (N, P or 1, C')
        else:
            y = 0
            if q is not None:
                # sum_j softmax_j(p_ij) v_j without the (P, Pk) matrix: (N, 1, P, C'), one head.
                y = fused_attention(q, k, v, scale=1.0)
            if unary is not None:
                y = y + torch.softmax(unary, dim=-1) @ v  # (N, 1, Pk) @ (N, Pk, C') -> (N, 1, C')
        return self.residual(x, y.expand(N, H * W, self.channels))  # unary part broadcast over the P queries

    def unary_logits(self, xk: Tensor, mean_query: Tensor | None, raw_key: Tensor | None) -> Tensor | None:
        """u_j, (N, 1, Pk): W_m x, or mu_q . k_j / sqrt(C') for the shared key, or None."""
        if self.unary_source == "conv":
            return self.unary(xk).flatten(2)  # (N, 1, Hk, Wk) -> (N, 1, Pk)
        if self.unary_source == "shared_key":
            return mean_query @ raw_key.transpose(1, 2) * self.scale  # (N, 1, C') @ (N, C', Pk) -> (N, 1, Pk)
        return None
