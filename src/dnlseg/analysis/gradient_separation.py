"""The add-vs-multiply claim of docs/science.md section 2.1, as a number.

Hold the upstream gradient G = dL/dw fixed and look at the gradient reaching the unary logits,

    g_u(p) = d/du sum_ij G_ij w_ij(p, u),

    NL : w = softmax_j(p_ij + u_j)             -> g_u depends on p (the terms multiply inside one softmax)
    DNL: w = softmax_j(p_ij) + softmax_j(u_j)  -> g_u does not depend on p at all

The cross-sensitivity is the relative change of g_u when the pairwise logits are perturbed,

    cross = || g_u(p + dp) - g_u(p) || / || g_u(p) ||,    ||dp|| = relative_step * ||p||, dp random,

exactly 0 for DNL and clearly positive for NL (a finite-difference view of the mixed derivative d2L/dp du).

``combine(p, u, rows)`` is a captured call's (``CapturedAttention.combine``): restricted to each query's keys, so
``rows`` (N, Q), the query rows p holds, must be given where p holds some rows only and the key set depends on the
query (CCNet's row and column, ISA's group). dp is drawn on each query's keys only, and ||p|| taken over them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dnlseg.context.keys import Combine  # combine(p (N, Q, Pk), u (N, 1, Pk), rows (N, Q) or None) -> w


def unary_logit_gradient(
    combine: Combine, pairwise: Tensor, unary: Tensor, upstream: Tensor, rows: Tensor | None = None
) -> Tensor:
    """g_u = d/du sum(G * combine(p, u, rows)) with G = ``upstream`` fixed; (N, 1, Pk)."""
    u = unary.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(combine(pairwise.detach(), u, rows), u, grad_outputs=upstream.detach())
    return grad


def cross_sensitivity(
    combine: Combine,
    pairwise: Tensor,
    unary: Tensor,
    upstream: Tensor,
    relative_step: float = 1e-2,
    generator: torch.Generator | None = None,
    rows: Tensor | None = None,
    key_mask: Tensor | None = None,
) -> Tensor:
    """Relative change of the unary-logit gradient under a random perturbation of the pairwise logits.

    Args:
        combine: the captured call's ``combine(p, u, rows) -> w`` (e.g. ``NonLocal2d.combine``).
        pairwise: p, (N, Q, Pk): the rows ``rows`` of the pairwise logits (all P rows when ``rows`` is None).
        unary: u, (N, 1, Pk).
        upstream: G = dL/dw, (N, Q, Pk), held fixed.
        relative_step: ||dp|| / ||p||, both over each query's keys.
        generator: for the random direction of dp (keeps the global RNG stream untouched).
        rows: (N, Q) the query rows of ``pairwise`` (``combine`` needs them for a per-query key set); None: all.
        key_mask: (N, Q, Pk) bool, each query's keys (``CapturedAttention.key_mask(rows)``); None: every key.
    """
    with torch.enable_grad():
        direction = torch.randn(pairwise.shape, generator=generator, dtype=pairwise.dtype, device=pairwise.device)
        scale_of = pairwise
        if key_mask is not None:  # logits outside a query's keys do not enter its softmax: neither dp nor ||p||
            direction = direction * key_mask
            scale_of = pairwise * key_mask
        step = direction * (relative_step * scale_of.norm() / direction.norm().clamp(min=1e-30))
        before = unary_logit_gradient(combine, pairwise, unary, upstream, rows)
        after = unary_logit_gradient(combine, pairwise + step, unary, upstream, rows)
    return (after - before).norm() / before.norm().clamp(min=1e-30)
