"""The add-vs-multiply claim of docs/science.md section 2.1, as a number.

Hold the upstream gradient G = dL/dw fixed and look at the gradient reaching the unary logits,

    g_u(p) = d/du sum_ij G_ij w_ij(p, u),

    NL : w = softmax_j(p_ij + u_j)             -> g_u depends on p (the terms multiply inside one softmax)
    DNL: w = softmax_j(p_ij) + softmax_j(u_j)  -> g_u does not depend on p at all

The cross-sensitivity is the relative change of g_u when the pairwise logits are perturbed,

    cross = || g_u(p + dp) - g_u(p) || / || g_u(p) ||,    ||dp|| = relative_step * ||p||, dp random,

exactly 0 for DNL and clearly positive for NL (a finite-difference view of the mixed derivative d2L/dp du).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Combine = Callable[[Tensor, Tensor], Tensor]


def unary_logit_gradient(combine: Combine, pairwise: Tensor, unary: Tensor, upstream: Tensor) -> Tensor:
    """g_u = d/du sum(G * combine(p, u)) with G = ``upstream`` fixed; (N, 1, Pk)."""
    u = unary.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(combine(pairwise.detach(), u), u, grad_outputs=upstream.detach())
    return grad


def cross_sensitivity(
    combine: Combine,
    pairwise: Tensor,
    unary: Tensor,
    upstream: Tensor,
    relative_step: float = 1e-2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Relative change of the unary-logit gradient under a random perturbation of the pairwise logits.

    Args:
        combine: the block's ``combine(p, u) -> w`` (``NonLocal2d.combine`` or ``DisentangledNonLocal2d.combine``).
        pairwise: p, (N, P, Pk).
        unary: u, (N, 1, Pk).
        upstream: G = dL/dw, (N, P, Pk), held fixed.
        relative_step: ||dp|| / ||p||.
        generator: for the random direction of dp (keeps the global RNG stream untouched).
    """
    with torch.enable_grad():
        direction = torch.randn(pairwise.shape, generator=generator, dtype=pairwise.dtype, device=pairwise.device)
        step = direction * (relative_step * pairwise.norm() / direction.norm().clamp(min=1e-30))
        before = unary_logit_gradient(combine, pairwise, unary, upstream)
        after = unary_logit_gradient(combine, pairwise + step, unary, upstream)
    return (after - before).norm() / before.norm().clamp(min=1e-30)
