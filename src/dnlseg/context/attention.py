"""The attention kernel the blocks share: softmax attention without the (P, Pk) matrix.

Shape legend (as in ``dnlseg.context.base``): N batch, P query positions, Pk key positions, Cq query/key channels,
C' value channels.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK_ELEMENTS = 1 << 22  # the row-blocked kernel's (rows, Pk) logits per image per block: 16 MiB in fp32


def tokens(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, P, C), contiguous: the layout SDPA's fused CPU/GPU kernels need (last-dim stride 1)."""
    return t.flatten(2).transpose(1, 2).contiguous()


def fused_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """y_i = sum_j softmax_j(q_i . k_j * scale) v_j without the (P, Pk) matrix: q (N, P, Cq), k (N, Pk, Cq),
    v (N, Pk, C') -> (N, P, C').

    One head of ``F.scaled_dot_product_attention``. PyTorch's CPU flash-attention backward is several times slower
    per unit of work when batch x heads is 1 (measured 7.5 s against 0.8 s at P=4096, C'=256); query rows are
    independent, so on CPU with N=1 the queries are split into two heads sharing k and v (``expand``, no copy),
    which gives the same result. CUDA kernels parallelise over query blocks and take the plain call.
    """
    N, P, Cq = q.shape
    if q.device.type == "cpu" and v.shape[-1] != Cq:
        # PyTorch's CPU flash kernel needs Cv == Cq; its fallback builds the (P, Pk) map (DANet's PAM: Cq = C / 8).
        return RowBlockedAttention.apply(q, k, v, scale)
    if q.device.type != "cpu" or N > 1:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]
    half = (P + 1) // 2
    q2 = F.pad(q, (0, 0, 0, 2 * half - P)).reshape(N, 2, half, Cq)  # an odd P gets one zero query row
    k2, v2 = k[:, None].expand(N, 2, *k.shape[1:]), v[:, None].expand(N, 2, *v.shape[1:])  # (N, 2, Pk, C')
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale).reshape(N, 2 * half, v.shape[-1])[:, :P]


class RowBlockedAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v a block of query rows at a time, keeping only each row's max and sum of
    exponentials: O(P) memory between forward and backward, O(rows Pk) while one block is computed. For Cv != Cq on
    CPU, where PyTorch has no fused kernel. Per block of rows B (a = its attention, o = its output, g = dL/do):

        forward   l = q_B k^T scale,  m = max_j l,  s = sum_j exp(l - m),  a = exp(l - m) / s,  o_B = a v
        backward  a as in the forward             (recomputed: one (B, Cq) @ (Cq, Pk) product)
                  dv += a^T g_B,  ds = a * (g_B v^T - sum_c g_B o_B) * scale,  dq_B = ds k,  dk += ds^T q_B
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        rows = max(16, BLOCK_ELEMENTS // max(k.shape[1], 1))
        key_t = k.transpose(1, 2)  # (N, Cq, Pk)
        outputs, maxima, sums = [], [], []
        for start in range(0, q.shape[1], rows):
            weights, top, total = block_softmax(q[:, start : start + rows], key_t, scale)  # (N, B, Pk)
            outputs.append(weights @ v)  # (N, B, Pk) @ (N, Pk, Cv) -> (N, B, Cv)
            maxima.append(top)
            sums.append(total)
        out = torch.cat(outputs, dim=1)
        ctx.save_for_backward(q, k, v, out, torch.cat(maxima, dim=1), torch.cat(sums, dim=1))
        ctx.scale, ctx.rows = scale, rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        saved = ctx.saved_tensors
        dtypes = [t.dtype for t in saved[:3]]
        wide = functools.reduce(torch.promote_types, [t.dtype for t in saved])
        q, k, v, out, maxima, sums = (t.to(wide) for t in saved)  # under autocast the dtypes may differ
        grad_out = grad_out.to(wide)
        key_t, value_t = k.transpose(1, 2), v.transpose(1, 2)
        delta = (grad_out * out).sum(-1, keepdim=True)  # (N, P, 1): sum_j a_ij (g_i . v_j)
        grad_q, grad_k, grad_v = [], torch.zeros_like(k), torch.zeros_like(v)
        for start in range(0, q.shape[1], ctx.rows):
            block = slice(start, start + ctx.rows)
            a, _, _ = block_softmax(q[:, block], key_t, ctx.scale, maxima[:, block], sums[:, block])  # (N, B, Pk)
            grad_v = grad_v + a.transpose(1, 2) @ grad_out[:, block]  # (N, Pk, B) @ (N, B, Cv)
            ds = a * (grad_out[:, block] @ value_t - delta[:, block]) * ctx.scale  # (N, B, Cv) @ (N, Cv, Pk)
            grad_q.append(ds @ k)  # (N, B, Pk) @ (N, Pk, Cq) -> (N, B, Cq)
            grad_k = grad_k + ds.transpose(1, 2) @ q[:, block]  # (N, Pk, B) @ (N, B, Cq) -> (N, Pk, Cq)
        return torch.cat(grad_q, dim=1).to(dtypes[0]), grad_k.to(dtypes[1]), grad_v.to(dtypes[2]), None


def block_softmax(
    q: Tensor, key_t: Tensor, scale: float, top: Tensor | None = None, total: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """a = softmax_j(q_i . k_j * scale) of a block of rows, with its row max and sum of exponentials (computed, or
    the forward's when given): q (N, B, Cq), key_t (N, Cq, Pk) -> (N, B, Pk), (N, B, 1), (N, B, 1)."""
    logits = (q @ key_t) * scale  # (N, B, Cq) @ (N, Cq, Pk) -> (N, B, Pk)
    if top is None:
        top = logits.amax(dim=-1, keepdim=True)
    weights = torch.exp(logits - top)
    if total is None:
        total = weights.sum(dim=-1, keepdim=True)
    return weights / total, top, total
