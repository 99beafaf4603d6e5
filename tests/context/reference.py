"""Formula implementations of the blocks, written from docs/science.md for the tests (no dnlseg code but the
block's own parameters): einsum over (N, C, P) maps, everything materialised."""

from __future__ import annotations

import torch


def conv1x1(conv, x):
    """The 1x1 conv written as a matrix product: (N, C, P) -> (N, C_out, P)."""
    out = torch.einsum("oc,ncp->nop", conv.weight[:, :, 0, 0], x)
    return out if conv.bias is None else out + conv.bias[None, :, None]


def whiten(t, kind, norm=None):
    """docs/science.md section 6.2 on (N, C', P): the mean removed over the positions (channel), the channels
    (spatial), both (ln_nostd), the batch and positions (bn_like); bn / bn_affine: batch statistics (train mode);
    None: no whitening."""
    if kind is None:
        return t
    if kind == "channel":
        return t - t.mean(2, keepdim=True)
    if kind == "spatial":
        return t - t.mean(1, keepdim=True)
    if kind == "ln_nostd":
        return t - t.mean((1, 2), keepdim=True)
    if kind == "bn_like":
        return t - t.mean((0, 2), keepdim=True)
    mean, var = t.mean((0, 2), keepdim=True), t.var((0, 2), unbiased=False, keepdim=True)
    out = (t - mean) / torch.sqrt(var + norm.eps)
    return out * norm.weight[None, :, None] + norm.bias[None, :, None] if kind == "bn_affine" else out
