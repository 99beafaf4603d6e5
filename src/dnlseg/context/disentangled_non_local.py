"""Disentangled Non-Local block (DNL; Yin et al., ECCV 2020), docs/science.md sections 2, 3 and 6.2.

    q = W_q x,  k = W_k x,  v = W_v x                     (N, C', P) each; v (N, Cv, P), Cv = C' (C without ``out``)
    p_ij = white(q)_i . white(k)_j * s                    whitened pairwise logit, s = 1 / (sqrt(C') tau)
    m_j  = W_m x                   (unary="conv", the paper's)
         = mu_q . k_j * s_u        (unary="shared_key"; s_u = 1/sqrt(C'), 1 (the official code) or s)
    w_ij = g * softmax_j(p_ij) + softmax_j(m_j)           the two terms are ADDED; g = 1, or gamma (output="gamma")
    y_i  = sum_j w_ij v_j = g * sum_j softmax_j(p_ij) v_j  +  sum_j softmax_j(m_j) v_j
                                `---- pairwise part -----'   `- one vector for every i -'
    out  = x + Norm(W_out y)

white(.) is ``whitening`` (``dnlseg.context.whitening``; "channel" = subtract the mean over positions, the paper's).
The variants of docs/science.md section 3 are keyword arguments (``dnlseg.context.VARIANTS``):
    DNL (paper)      pairwise=True,  unary="conv"
    DNL, shared key  pairwise=True,  unary="shared_key"
    pairwise NL      pairwise=True,  unary=None
    unary NL         pairwise=False, unary="conv"
The official code's options (section 6.2): ``whitening``, ``output="gamma"`` (y_pairwise times a learned scalar that
starts at 0, the norm after ``out`` not zero-initialised), ``use_out=False``, ``shared_key_scale="none"``; the
authors' mmdetection fork's: ``whitening="bn_like"``, ``temperature_form="softplus"``, ``fixbug=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from dnlseg.context.attention import fused_attention, tokens
from dnlseg.context.base import CapturedAttention, check_choice
from dnlseg.context.logit_scale import LogitScale, TemperatureForm
from dnlseg.context.non_local_base import AttentionPath, NonLocalBase
from dnlseg.context.whitening import Whiten, WhiteningKind

UnarySource = Literal["conv", "shared_key"]
UNARY_SOURCES = ("conv", "shared_key")
OutputMode = Literal["zero_norm", "gamma"]
OUTPUT_MODES = ("zero_norm", "gamma")
SharedKeyScale = Literal["sqrt", "none", "temperature"]
SHARED_KEY_SCALES = ("sqrt", "none", "temperature")


class DisentangledNonLocal2d(NonLocalBase):
    """Disentangled non-local block, (N, C, H, W) -> (N, C, H, W); the identity at initialisation with
    ``output="zero_norm"`` (module docstring for the formulas).

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction channels for query, key and value.
        temperature: tau > 0 dividing the whitened pairwise logits (0.05 in the paper's code and mmseg).
        learn_temperature: make tau a trained parameter.
        temperature_form: "log" (tau = exp of a parameter) or "softplus" (the logits times softplus(t) / sqrt(C'),
            the authors' mmdetection fork; learned only).
        fixbug: True scales the logits by 1/sqrt(C'); False by sqrt(C') (runs made without the fork's fix).
        pairwise: include the whitened pairwise term (False: the "unary NL" ablation).
        unary: source of the unary logits: "conv" (a separate 1x1 conv C -> 1, the paper's block),
            "shared_key" (mu_q . k_j, a paper ablation) or None (the "pairwise NL" ablation).
        shared_key_scale: the shared-key logit's scale: "sqrt" (1/sqrt(C')), "none" (the official code's
            ``with_unary``) or "temperature" (1/(sqrt(C') tau), as the pairwise logits).
        whitening: "channel" (the paper's), "spatial", "ln_nostd", "bn_like", "bn", "bn_affine", or None.
        output: "zero_norm" (the norm after ``out`` zero-initialised: the identity at init) or "gamma" (the
            official code: the pairwise part times a learned scalar gamma that starts at 0, the norm keeps its
            default initialisation).
        use_out: False: the value maps C -> C and there is no output conv (an official-code option).
        attention: "fused" (``F.scaled_dot_product_attention``, no (P, Pk) matrix) or "materialized".
        downsample: 2x2 max-pool of the input of keys, values and unary logits.
        norm_layer: the norm after ``out``; None: no norm (``out`` itself is zero-initialised with "zero_norm").
    """

    branch_modules = {
        "query": ("query", "query_whiten"),
        "key": ("key", "key_whiten"),
        "out": ("out", "out_norm", "gamma"),  # gamma scales the output of the pairwise part
    }
    mmseg_attribute = "dnl_block"  # DNLHead's

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        temperature: float = 0.05,
        learn_temperature: bool = False,
        temperature_form: TemperatureForm = "log",
        fixbug: bool = True,
        pairwise: bool = True,
        unary: UnarySource | None = "conv",
        shared_key_scale: SharedKeyScale = "sqrt",
        whitening: WhiteningKind | None = "channel",
        output: OutputMode = "zero_norm",
        use_out: bool = True,
        attention: AttentionPath = "fused",
        downsample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        check_choice("output", output, OUTPUT_MODES)
        super().__init__(in_channels, reduction, attention, downsample, norm_layer, use_out, output == "zero_norm")
        if unary is not None:
            check_choice("unary", unary, UNARY_SOURCES)
        check_choice("shared_key_scale", shared_key_scale, SHARED_KEY_SCALES)
        if not pairwise and unary is None:
            raise ValueError("pairwise=False with unary=None leaves no attention term: enable one of them")
        if not pairwise and unary == "shared_key":
            raise ValueError("unary='shared_key' needs the pairwise query/key: use unary='conv' with pairwise=False")
        self.has_pairwise = pairwise
        self.unary_source = unary
        self.shared_key_scale = shared_key_scale
        self.logit_scale = LogitScale(self.channels, temperature, learn_temperature, temperature_form, fixbug)

        self.query = nn.Conv2d(in_channels, self.channels, 1) if pairwise else None  # W_q: C -> C'
        self.key = nn.Conv2d(in_channels, self.channels, 1) if pairwise else None  # W_k: C -> C'
        self.query_whiten = Whiten(whitening, self.channels) if pairwise and whitening else None
        self.key_whiten = Whiten(whitening, self.channels) if pairwise and whitening else None
        self.unary = nn.Conv2d(in_channels, 1, 1) if unary == "conv" else None  # W_m: C -> 1
        # gamma: a learned scalar on the pairwise part, starting at 0 (output="gamma" with a pairwise term).
        self.gamma = nn.Parameter(torch.zeros(())) if output == "gamma" and pairwise else None

    @property
    def temperature(self) -> Tensor:
        return self.logit_scale.temperature

    def combine(
        self, pairwise_logits: Tensor | None, unary_logits: Tensor | None, rows: Tensor | None = None
    ) -> Tensor:
        """w_ij = g * softmax_j(p_ij) + softmax_j(u_j) -- each term normalised on its own, then ADDED."""
        pairwise = torch.softmax(pairwise_logits, dim=-1) if pairwise_logits is not None else None
        if pairwise is not None and self.gamma is not None:
            pairwise = self.gamma * pairwise
        unary = torch.softmax(unary_logits, dim=-1) if unary_logits is not None else None
        if pairwise is not None and unary is not None:
            return pairwise + unary
        if pairwise is not None:
            return pairwise
        if unary is not None:
            return unary
        raise ValueError("no pairwise and no unary logits: this block has no weights")

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        xk = self.key_input(x)
        v = tokens(self.value(xk))  # (N, Pk, Cv)
        q = k = mean_query = raw_key = None
        s = self.logit_scale()
        if self.query is not None and self.key is not None:  # has_pairwise
            raw_query, raw_key = tokens(self.query(x)), tokens(self.key(xk))  # (N, P, C'), (N, Pk, C')
            mean_query = raw_query.mean(dim=1, keepdim=True)  # mu_q (N, 1, C')
            # q carries the logit scale s, so tau may be a learned tensor.
            q = (self.query_whiten(raw_query) if self.query_whiten is not None else raw_query) * s  # (N, P, C')
            k = self.key_whiten(raw_key) if self.key_whiten is not None else raw_key  # (N, Pk, C')
        unary = self.unary_logits(xk, mean_query, raw_key, s)  # (N, 1, Pk) or None

        if self.materialize:
            pairwise = (
                q @ k.transpose(1, 2) if q is not None and k is not None else None
            )  # (N,P,C')@(N,C',Pk)->(N,P,Pk)
            y = self.combine(pairwise, unary) @ v  # (N, P or 1, Pk) @ (N, Pk, Cv) -> (N, P or 1, Cv)
        else:
            terms = []
            if q is not None and k is not None:
                # sum_j softmax_j(p_ij) v_j without the (P, Pk) matrix: (N, 1, P, C'), one head.
                y_pairwise = fused_attention(q, k, v, scale=1.0)
                terms.append(self.gamma * y_pairwise if self.gamma is not None else y_pairwise)
            if unary is not None:
                terms.append(torch.softmax(unary, dim=-1) @ v)  # (N, 1, Pk) @ (N, Pk, Cv) -> (N, 1, Cv)
            y = sum(terms[1:], terms[0])  # the pairwise and the unary term, ADDED (one of them at least: __init__)
        key_size = (xk.shape[-2], xk.shape[-1])
        self.publish(lambda: CapturedAttention(q, k, unary, v, y, (H, W), key_size, self.combine))
        return self.residual(x, y.expand(N, H * W, self.value_channels))  # unary part broadcast over the queries

    def unary_logits(self, xk: Tensor, mean_query: Tensor | None, raw_key: Tensor | None, s: Tensor) -> Tensor | None:
        """u_j, (N, 1, Pk): W_m x, or mu_q . k_j times ``shared_key_scale`` for the shared key, or None."""
        if self.unary is not None:  # unary_source "conv"
            return self.unary(xk).flatten(2)  # (N, 1, Hk, Wk) -> (N, 1, Pk)
        if self.unary_source == "shared_key":
            assert mean_query is not None and raw_key is not None  # shared_key needs the pairwise branch (__init__)
            logits = mean_query @ raw_key.transpose(1, 2)  # (N, 1, C') @ (N, C', Pk) -> (N, 1, Pk)
            if self.shared_key_scale == "sqrt":
                return logits * self.channels**-0.5
            return logits * s if self.shared_key_scale == "temperature" else logits
        return None
