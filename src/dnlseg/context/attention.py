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

BLOCK_ELEMENTS = 1 << 25  # the row-blocked kernel's (rows, Pk) map per image per block: 128 MiB in fp32
MIN_BLOCKS = 10  # ... and never more than a tenth of the map, however small P is (inference, the analyses)
TRAINING_MIN_BLOCKS = 2  # training: at most half the map; fewer, longer products (each waits for both threads)


def block_length(length: int, other: int, min_blocks: int = MIN_BLOCKS) -> int:
    """Rows (or key columns) per block of a (length, other) map: BLOCK_ELEMENTS per image, at least ``min_blocks``
    blocks, at least 16 rows."""
    return max(16, min(BLOCK_ELEMENTS // max(other, 1), -(-length // min_blocks)))


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

    On CPU with C' != Cq (DANet's PAM) SDPA has no fused kernel: training takes ``RowBlockedAttention``, inference
    ``attend_by_rows``; both take q, k, v as transposed views of (N, C, P) maps without a copy. Their loops run over
    the images and blocks of this call's sizes, which a ``torch.jit.trace`` would freeze, so a trace records SDPA
    instead (correct at every size; its CPU fallback builds the map).
    """
    if torch.compiler.is_exporting():
        return torch.ops.dnlseg.attention(q, k, v, scale)
    N, P, Cq = q.shape
    if q.device.type == "cpu" and v.shape[-1] != Cq and not torch.jit.is_tracing():
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return RowBlockedAttention.apply(q, k, v, scale)
        with torch.autocast(q.device.type, enabled=False):  # inference: no log-sum-exp kept
            dtype = functools.reduce(torch.promote_types, (q.dtype, k.dtype, v.dtype))
            return attend_by_rows((q if scale == 1.0 else q * scale).to(dtype), k.to(dtype), v.to(dtype))
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # SDPA's fused kernels need the last-dim stride 1
    if q.device.type != "cpu" or N > 1:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]
    half = (P + 1) // 2
    q2 = F.pad(q, (0, 0, 0, 2 * half - P)).reshape(N, 2, half, Cq)  # an odd P gets one zero query row
    k2, v2 = k[:, None].expand(N, 2, *k.shape[1:]), v[:, None].expand(N, 2, *v.shape[1:])  # (N, 2, Pk, C')
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale).reshape(N, 2 * half, v.shape[-1])[:, :P]


class RowBlockedAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v without the (P, Pk) map, keeping only each query row's log-sum-exp between forward
    and backward (flash attention's recomputation): O(P) memory, O(P Pk / blocks) while one block is computed. For
    Cv != Cq on CPU, where PyTorch has no fused kernel (its fallback builds the map). a = the attention, o = the
    output, g = dL/do, q' = q * scale, one image at a time:

        forward, by blocks R of query rows:  l = q'_R k^T,  a_R = softmax_j(l),  o_R = a_R v,
                                             lse_R = max_j l - log max_j a_R     (softmax's largest weight is
                                                                                  exp(max_j l - lse))
        backward, by blocks J of keys:       a_J = exp(q' k_J^T - lse)                  (recomputed, (P, J))
                                             dv_J = a_J^T g,  ds_J = a_J * (g v_J^T - delta),  delta = sum_c g o,
                                             dk_J = ds_J^T q',  dq += scale * ds_J k_J

    Every large product contracts over P, Pk or Cv, never over a small block (a backward by query rows would add
    up a whole (Pk, Cv) dv per block). The maps of a block are two buffers that every block reuses, and every
    product writes in place (``out=``): no fresh map per block, whose pages the kernel would fault in again. The
    shifts -lse and -delta ride in the products as one more channel ([q', -lse] . [k_j, 1] = q'_i . k_j - lse_i),
    so no pass over a map spreads them. q, k, v may be transposed views of (N, C, P) maps
    (``PositionAttention2d``): the products read them in place, and the output and gradients take their layout.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        dtype = functools.reduce(torch.promote_types, (q.dtype, k.dtype, v.dtype))  # under autocast they may differ
        with torch.autocast(q.device.type, enabled=False):
            scaled = (q if scale == 1.0 else q * scale).to(dtype)  # the scale on the small factor
            k, v = k.to(dtype), v.to(dtype)
            lse = scaled.new_empty(*q.shape[:2], 1)
            out = attend_by_rows(scaled, k, v, lse, min_blocks=TRAINING_MIN_BLOCKS)
        ctx.save_for_backward(scaled, k, v, out, lse)
        ctx.scale, ctx.dtypes = scale, (q.dtype, k.dtype, v.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        scaled, k, v, out, lse = ctx.saved_tensors
        N, P, Cq = scaled.shape
        Pk, Cv = v.shape[1:]
        with torch.autocast(scaled.device.type, enabled=False):
            grad_out = grad_out.to(out.dtype)
            delta = (grad_out * out).sum(-1, keepdim=True)  # (N, P, 1): sum_j a_ij (g_i . v_j)
            ones = k.new_ones(N, Pk, 1)
            query, key = torch.cat([scaled, -lse], -1), torch.cat([k, ones], -1)  # (N, P | Pk, Cq + 1)
            grad, value = torch.cat([grad_out, -delta], -1), torch.cat([v, ones], -1)  # (N, P | Pk, Cv + 1)
            columns = block_length(Pk, P, TRAINING_MIN_BLOCKS)
            a_map, ds_map = scaled.new_empty(P * columns), scaled.new_empty(P * columns)  # (P, J) each
            grad_q, grad_k, grad_v = torch.zeros_like(scaled), torch.empty_like(k), torch.empty_like(v)
            for n in range(N):
                for start in range(0, Pk, columns):
                    keys, J = slice(start, start + columns), min(columns, Pk - start)
                    a = torch.mm(query[n], key[n, keys].t(), out=a_map[: P * J].view(P, J)).exp_()
                    # (P, Cq + 1) @ (Cq + 1, J) -> (P, J)
                    torch.mm(a.t(), grad[n, :, :Cv], out=grad_v[n, keys])  # (J, P) @ (P, Cv) -> (J, Cv)
                    ds = torch.mm(grad[n], value[n, keys].t(), out=ds_map[: P * J].view(P, J)).mul_(a)
                    # (P, Cv + 1) @ (Cv + 1, J) -> (P, J)
                    torch.mm(ds.t(), scaled[n], out=grad_k[n, keys])  # (J, P) @ (P, Cq) -> (J, Cq)
                    grad_q[n].addmm_(ds, k[n, keys])  # += (P, J) @ (J, Cq)
            if ctx.scale != 1.0:
                grad_q *= ctx.scale
        return (*(t.to(d) for t, d in zip((grad_q, grad_k, grad_v), ctx.dtypes, strict=True)), None)


def attend_by_rows(q: Tensor, k: Tensor, v: Tensor, lse: Tensor | None = None, min_blocks: int = MIN_BLOCKS) -> Tensor:
    """softmax(q k^T) v by blocks of query rows, one image at a time: q (N, P, Cq), k (N, Pk, Cq), v (N, Pk, C')
    -> (N, P, C') in v's layout; each row's log-sum-exp written into ``lse`` (N, P, 1) when given. The (rows, Pk)
    logits and weights are two buffers that every block reuses; the products write in place."""
    N, P, _ = q.shape
    Pk, Cv = v.shape[1:]
    rows = block_length(P, Pk, min_blocks)
    logits_map, weights_map = q.new_empty(rows * Pk), q.new_empty(rows * Pk)  # (rows, Pk) each
    channels_first = v.stride(1) == 1 and v.stride(2) != 1  # v a (N, Pk, C') view of an (N, C', Pk) map
    out = v.new_empty(N, Cv, P).transpose(1, 2) if channels_first else v.new_empty(N, P, Cv)
    for n in range(N):
        key_t = k[n].t()  # (Cq, Pk)
        for start in range(0, P, rows):
            block, R = slice(start, start + rows), min(rows, P - start)
            logits = torch.mm(q[n, block], key_t, out=logits_map[: R * Pk].view(R, Pk))  # (R, Cq) @ (Cq, Pk)
            weights = torch.softmax(logits, dim=-1, out=weights_map[: R * Pk].view(R, Pk))  # (R, Pk)
            if lse is not None:
                torch.sub(logits.amax(-1, keepdim=True), weights.amax(-1, keepdim=True).log_(), out=lse[n, block])
            torch.mm(weights, v[n], out=out[n, block])  # (R, Pk) @ (Pk, C') -> (R, C')
    return out


@torch.library.custom_op("dnlseg::attention", mutates_args=())
def exported_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``fused_attention`` as one operator of an exported graph: q (N, P, Cq), k (N, Pk, Cq), v (N, Pk, C')
    -> (N, P, C'). Run eagerly (an ``ExportedProgram`` called in PyTorch) it is SDPA."""
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0].contiguous()


@exported_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])
