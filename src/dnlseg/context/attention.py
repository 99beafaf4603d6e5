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

import torch
import torch.nn.functional as F
from torch import Tensor


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
    if q.device.type != "cpu" or N > 1:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]
    half = (P + 1) // 2
    q2 = F.pad(q, (0, 0, 0, 2 * half - P)).reshape(N, 2, half, Cq)  # an odd P gets one zero query row
    k2, v2 = k[:, None].expand(N, 2, *k.shape[1:]), v[:, None].expand(N, 2, *v.shape[1:])  # (N, 2, Pk, C')
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale).reshape(N, 2 * half, v.shape[-1])[:, :P]


@torch.library.custom_op("dnlseg::attention", mutates_args=())
def exported_attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``fused_attention`` as one operator of an exported graph: q (N, P, Cq), k (N, Pk, Cq), v (N, Pk, C')
    -> (N, P, C'). Run eagerly (an ``ExportedProgram`` called in PyTorch) it is SDPA."""
    return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0].contiguous()


@exported_attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    return q.new_empty(q.shape[0], q.shape[1], v.shape[2])
