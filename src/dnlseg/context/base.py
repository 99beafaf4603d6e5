"""What every context block shares: the value and output branches, the zero-initialised output norm,
the optional 2x2 pooling of keys/values, and the record of a materialised attention.

Shape legend used throughout ``dnlseg.context``:
    N  batch size
    C  input channels,  C' = C // reduction  embedding channels
    H, W   query grid,  P  = H * W  query positions
    Hk, Wk key grid,    Pk = Hk * Wk key/value positions (P, or about P / 4 with ``downsample``)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

AttentionPath = Literal["fused", "materialized"]
ATTENTION_PATHS = ("fused", "materialized")


@dataclass
class AttentionMaps:
    """The materialised attention of one forward pass, for analysis and probes.

    The tensors are part of the autograd graph of that pass, so ``torch.autograd.grad(loss, maps.pairwise_logits)``
    gives dL/dp.

    Attributes:
        weights: w_ij, (N, P, Pk): the attention actually applied to the values.
        pairwise_logits: p_ij, (N, P, Pk), or None for a block without a pairwise term.
        unary_logits: u_j, (N, 1, Pk), or None for a block without a unary term.
        query_size: (H, W) of the query grid.
        key_size: (Hk, Wk) of the key grid.
    """

    weights: Tensor
    pairwise_logits: Tensor | None
    unary_logits: Tensor | None
    query_size: tuple[int, int]
    key_size: tuple[int, int]


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
    if q.device.type != "cpu" or N > 1:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=scale)[:, 0]
    half = (P + 1) // 2
    q2 = F.pad(q, (0, 0, 0, 2 * half - P)).reshape(N, 2, half, Cq)  # an odd P gets one zero query row
    k2, v2 = k[:, None].expand(N, 2, *k.shape[1:]), v[:, None].expand(N, 2, *v.shape[1:])  # (N, 2, Pk, C')
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale).reshape(N, 2 * half, v.shape[-1])[:, :P]


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")


class ContextBlock(nn.Module):
    """Base of the non-local blocks: ``out = x + out_norm(out(y))`` with y computed by the subclass.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction channels for query, key and value.
        attention: "fused" computes sum_j w_ij v_j without building the (P, Pk) matrix;
            "materialized" builds it (and can hand it out, see ``keep_attention``).
        downsample: 2x2 max-pool of the input of keys/values (and unary), Pk ~ P / 4.
        norm_layer: norm after ``out``, built as ``norm_layer(C)``; its weight is zero-initialised so the block
            starts as the identity. None: no norm, ``out`` itself is zero-initialised instead.
    """

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        attention: AttentionPath = "fused",
        downsample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or reduction <= 0:
            raise ValueError(f"in_channels={in_channels} and reduction={reduction} must be positive")
        if in_channels % reduction != 0:
            raise ValueError(
                f"in_channels={in_channels} is not divisible by reduction={reduction}: "
                f"choose a reduction that divides the channel count (e.g. 1, 2, 4)"
            )
        check_choice("attention", attention, ATTENTION_PATHS)
        self.in_channels = in_channels
        self.channels = in_channels // reduction  # C'
        self.attention = attention
        self.downsample = downsample
        # When True, the next forward takes the materialised path and stores its AttentionMaps here.
        self.keep_attention = False
        self.last_attention: AttentionMaps | None = None

        self.value = nn.Conv2d(in_channels, self.channels, 1)  # W_v: C -> C'
        # W_out: C' -> C; a bias before the norm would be cancelled by it (mmseg's ConvModule leaves it out too)
        self.out = nn.Conv2d(self.channels, in_channels, 1, bias=norm_layer is None)
        self.out_norm = norm_layer(in_channels) if norm_layer is not None else nn.Identity()
        zero_target = self.out_norm if norm_layer is not None else self.out
        if not isinstance(getattr(zero_target, "weight", None), Tensor):
            raise ValueError(f"norm_layer {norm_layer!r} has no affine weight to zero-initialise")
        nn.init.zeros_(zero_target.weight)
        if getattr(zero_target, "bias", None) is not None:
            nn.init.zeros_(zero_target.bias)

    @property
    def materialize(self) -> bool:
        return self.attention == "materialized" or self.keep_attention

    def key_input(self, x: Tensor) -> Tensor:
        """The feature map keys, values and unary logits are computed from: x, or x max-pooled 2x2."""
        return F.max_pool2d(x, 2, ceil_mode=True) if self.downsample else x

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        """out = x + Norm(W_out y);  y: (N, P, C') -> (N, C', H, W) -> (N, C, H, W)."""
        N, C, H, W = x.shape
        y = y.transpose(1, 2).reshape(N, self.channels, H, W)
        return x + self.out_norm(self.out(y))

    def record(self, maps: AttentionMaps) -> None:
        if self.keep_attention:
            self.last_attention = maps


def find_context_blocks(module: nn.Module) -> dict[str, ContextBlock]:
    """Every context block inside ``module`` by its qualified name (e.g. ``network.decode_head.context``)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, ContextBlock)}
