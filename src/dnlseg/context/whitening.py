"""Whitening of the query and key before their pairwise product: the options of the official DNL code.

t is (N, P, Cq) tokens (P positions, Cq channels):

    channel    t - mean over positions, per channel          the paper's whitening (mu_q, mu_k)
    spatial    t - mean over channels, per position
    ln_nostd   t - mean over channels and positions
    bn_like    t - mean over the batch and positions, per channel   (the authors' mmdetection fork)
    bn         BatchNorm1d over the Cq channels, no affine   (mean and std over batch and positions; running
    bn_affine  the same, with a learned affine                statistics in eval mode)

docs/science.md section 6.2. All out of place (an in-place ``-=`` breaks autograd on newer PyTorch).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from dnlseg.context.base import check_choice

WhiteningKind = Literal["channel", "spatial", "ln_nostd", "bn_like", "bn", "bn_affine"]
WHITENINGS = ("channel", "spatial", "ln_nostd", "bn_like", "bn", "bn_affine")
MEAN_DIMS = {"channel": (1,), "spatial": (2,), "ln_nostd": (1, 2), "bn_like": (0, 1)}


class Whiten(nn.Module):
    """(N, P, Cq) -> (N, P, Cq), one of ``WHITENINGS`` (module docstring).

    Args:
        kind: the whitening.
        channels: Cq (the BatchNorm kinds).
    """

    def __init__(self, kind: WhiteningKind, channels: int) -> None:
        super().__init__()
        check_choice("whitening", kind, WHITENINGS)
        self.kind = kind
        self.norm = nn.BatchNorm1d(channels, affine=kind == "bn_affine") if kind in ("bn", "bn_affine") else None

    def forward(self, t: Tensor) -> Tensor:
        if self.norm is not None:
            return self.norm(t.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d on (N, Cq, P)
        return t - t.mean(dim=MEAN_DIMS[self.kind], keepdim=True)
