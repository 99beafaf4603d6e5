"""The attention kernel the blocks share: softmax attention without the (P, Pk) matrix.

Shape legend (as in ``dnlseg.context.base``): N batch, P query positions, Pk key positions, Cq query/key channels,
C' value channels.

    y_i = sum_j softmax_j(q_i . k_j * scale) v_j          q (N, P, Cq), k (N, Pk, Cq), v (N, Pk, C') -> (N, P, C')

In eager mode and under ``torch.compile`` this is ``F.scaled_dot_product_attention``. A graph exported with
``torch.export`` (what ``dnlseg export`` and the ONNX exporter trace) sees it as one node, ``dnlseg::attention``,
so an exporter can lower it to a formulation that stays O(P) in memory (``dnlseg.deploy.onnx_attention``) instead
of SDPA's reference decomposition, which materialises the (P, Pk) matrix (4.3 GB at P = Pk = 32768).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BLOCK_ELEMENTS = 1 << 23  # the row-blocked kernel's (rows, Pk) map per image per block: 32 MiB in fp32
MIN_BLOCKS = 10  # ... and never more than a tenth of the map, however small P is


def block_length(length: int, other: int) -> int:
    """Rows (or key columns) per block of a (length, other) map: BLOCK_ELEMENTS per image, at least MIN_BLOCKS
    blocks, at least 16 rows."""
    return max(16, min(BLOCK_ELEMENTS // max(other, 1), -(-length // MIN_BLOCKS)))


def tokens(t: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, P, C), contiguous: the layout SDPA's fused CPU/GPU kernels need (last-dim stride 1)."""
    return t.flatten(2).transpose(1, 2).contiguous()


def fused_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """y_i = sum_j softmax_j(q_i . k_j * scale) v_j without the (P, Pk) matrix: q (N, P, Cq), k (N, Pk, Cq),
    v (N, Pk, C') -> (N, P, C').

    One head of ``F.scaled_dot_product_attention``. PyTorch's CPU flash-attention backward is several times slower
    per unit of work when batch x heads is 1 (measured 7.5 s against 0.8 s at P=4096, C'=256); query rows are
    independent, so on CPU with N=1 the queries are split into two heads sharing k and v (``expand``, no copy),
    which gives the same result. CUDA kernels parallelise over query blocks and take the plain call. Under
    ``torch.export`` the call is the one node ``dnlseg::attention`` (module docstring).
    """
    if torch.compiler.is_exporting():
        return torch.ops.dnlseg.attention(q, k, v, scale)
    N, P, Cq = q.shape
    if q.device.type == "cpu" and v.shape[-1] != Cq and not torch.jit.is_tracing():
        # PyTorch's CPU flash kernel needs Cv == Cq; its fallback builds the (P, Pk) map (DANet's PAM: Cq = C / 8).
        # A TorchScript trace cannot record a Python autograd Function: it records SDPA (that fallback) instead.
        return RowBlockedAttention.apply(q, k, v, scale)
    if q.device.type != "cpu" or N > 1:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]
    half = (P + 1) // 2
    q2 = F.pad(q, (0, 0, 0, 2 * half - P)).reshape(N, 2, half, Cq)  # an odd P gets one zero query row
    k2, v2 = k[:, None].expand(N, 2, *k.shape[1:]), v[:, None].expand(N, 2, *v.shape[1:])  # (N, 2, Pk, C')
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale).reshape(N, 2 * half, v.shape[-1])[:, :P]


class RowBlockedAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v without the (P, Pk) map, keeping only each query row's log-sum-exp between forward
    and backward: O(P) memory, O(P Pk / blocks) while one block is computed. For Cv != Cq on CPU, where PyTorch has
    no fused kernel (its fallback builds the map). a = the attention, o = the output, g = dL/do, q' = q * scale:

        forward, by blocks R of query rows:  l = q'_R k^T,  a_R = softmax_j(l),  lse_R = logsumexp_j(l),  o_R = a_R v
                                             (the softmax in place: m = max l, a = exp(l - m) / s, lse = m + log s)
        backward, by blocks J of keys:       a_J = exp(q' k_J^T - lse)                  (recomputed, (P, J))
                                             dv_J = a_J^T g,  ds_J = a_J * (g v_J^T - sum_c g o),
                                             dk_J = ds_J^T q',  dq += scale * ds_J k_J

    Every large product contracts over P, Pk or Cv, never over a small block (a backward by query rows would add
    up a whole (Pk, Cv) dv per block), and the elementwise work is fused into the products (``baddbmm``) or done
    in place.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        rows = block_length(q.shape[1], k.shape[1])
        scaled = q * scale  # (N, P, Cq): the scale on the small factor
        key_t = k.transpose(1, 2)  # (N, Cq, Pk)
        outputs, lses = [], []
        for start in range(0, q.shape[1], rows):
            logits = scaled[:, start : start + rows] @ key_t  # (N, R, Cq) @ (N, Cq, Pk) -> (N, R, Pk)
            top = logits.amax(dim=-1, keepdim=True)  # (N, R, 1); the softmax in place, its parts kept
            weights = logits.sub_(top).exp_()
            total = weights.sum(dim=-1, keepdim=True)
            lses.append(top + total.log())  # (N, R, 1)
            outputs.append(weights.div_(total) @ v)  # (N, R, Pk) @ (N, Pk, Cv) -> (N, R, Cv)
        out = torch.cat(outputs, dim=1)
        ctx.save_for_backward(scaled, k, v, out, torch.cat(lses, dim=1))
        ctx.scale = scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        saved = ctx.saved_tensors
        dtypes = [t.dtype for t in saved[:3]]
        wide = functools.reduce(torch.promote_types, [t.dtype for t in saved])
        scaled, k, v, out, lse = (t.to(wide) for t in saved)  # under autocast the dtypes may differ
        grad_out = grad_out.to(wide)
        delta = (grad_out * out).sum(-1, keepdim=True)  # (N, P, 1): sum_j a_ij (g_i . v_j)
        columns = block_length(k.shape[1], scaled.shape[1])
        grad_q, grad_k, grad_v = torch.zeros_like(scaled), [], []
        for start in range(0, k.shape[1], columns):
            keys = slice(start, start + columns)
            a = torch.baddbmm(-lse, scaled, k[:, keys].transpose(1, 2)).exp_()  # (N, P, Cq) @ (N, Cq, J)
            grad_v.append(a.transpose(1, 2) @ grad_out)  # (N, J, P) @ (N, P, Cv) -> (N, J, Cv)
            ds = a.mul_(torch.baddbmm(-delta, grad_out, v[:, keys].transpose(1, 2)))  # (N, P, Cv) @ (N, Cv, J)
            grad_k.append(ds.transpose(1, 2) @ scaled)  # (N, J, P) @ (N, P, Cq) -> (N, J, Cq)
            grad_q.baddbmm_(ds, k[:, keys])  # += (N, P, J) @ (N, J, Cq)
        grad_q = grad_q * ctx.scale
        return (
            grad_q.to(dtypes[0]),
            torch.cat(grad_k, dim=1).to(dtypes[1]),
            torch.cat(grad_v, dim=1).to(dtypes[2]),
            None,
        )


@torch.library.custom_op("dnlseg::attention", mutates_args=())
def exported_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``fused_attention`` as one operator of an exported graph: q (N, P, Cq), k (N, Pk, Cq), v (N, Pk, C')
    -> (N, P, C'). Run eagerly (an ``ExportedProgram`` called in PyTorch) it is SDPA."""
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0].contiguous()


@exported_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])
