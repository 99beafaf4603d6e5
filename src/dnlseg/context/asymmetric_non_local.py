"""ANN's asymmetric non-local blocks (Zhu et al., ICCV 2019, arXiv 1908.07678, Sec. 3), docs/science.md section 7.
The keys and values are not the pixels but the 110 cells of a pyramid pooling (1, 3, 6, 8) of the key map:

    q = ReLU(BN(W_q x_q))                          (N, C', P) queries from the query map
    k = pool(ReLU(BN(W_k x_k))),  v = pool(W_v x_k) (N, C', 110): pool = average over each pyramid cell
    w_ic = softmax_c( q_i . k_c / sqrt(C') )       c over the 110 cells
    y_i  = W_out sum_c w_ic v_c                    W_out: 1x1 conv C' -> C_out, zero-initialised (weight and bias)
    out  = Norm(W_b [y ; x_q])  (+ ReLU in APNB)   the bottleneck over y beside the query map

APNB (``AsymmetricPyramidNonLocal2d``): one map, the query and key projections shared (the same module; in training
it is called twice, as mmseg does, so BatchNorm's running statistics move twice). AFNB
(``AsymmetricFusionNonLocal2d``): queries from the high-level map (stage 4), keys and values from the low-level
one (stage 3), no ReLU after the bottleneck. The analyses get the keys as ``TokenKeys("pyramid cells")`` whose cover
is each cell's pooling weights on the key grid.

mmseg 1.2.2: ``mmseg.models.decode_heads.ann_head.APNB`` / ``AFNB`` (``ANNHead.context`` / ``.fusion``) with
``query_scales=(1,)``; keys ``stages.0.{query_project, key_project, value_project, out_project}`` and ``bottleneck``
-> ours ``query``, ``key``, ``value``, ``out``, ``bottleneck`` (``ConvModule``'s ``conv``/``bn`` kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from dnlseg.context.base import CoupledAttention, implicit_split
from dnlseg.context.keys import TokenKeys
from dnlseg.context.layers import ConvNormAct, NormLayer, pointwise_conv, pyramid_cover, pyramid_pool

POOL_SCALES = (1, 3, 6, 8)
NOT_PIXELS = "its keys are pyramid cells (averages over regions), not pixels: no key lies on a boundary"


class PyramidNonLocal(CoupledAttention):
    """What APNB and AFNB share: attention of the query map's pixels over the key map's pyramid cells, then the
    bottleneck over [y ; x_q] (module docstring)."""

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"out": ("out", "bottleneck")}
    undefined_analyses: ClassVar[dict[str, str]] = {"boundary_consistency": NOT_PIXELS}
    mmseg_names: ClassVar[dict[str, str]] = {
        "query": "stages.0.query_project",
        "key": "stages.0.key_project",
        "value": "stages.0.value_project",
        "out": "stages.0.out_project",
        "bottleneck": "bottleneck",
    }

    def __init__(
        self,
        query_channels: int,
        key_channels: int,
        channels: int,
        out_channels: int,
        pool_scales: Sequence[int],
        norm_layer: NormLayer,
        shared_key: bool,
        bottleneck_act: bool,
    ) -> None:
        super().__init__()
        if min(query_channels, key_channels, channels, out_channels) <= 0 or not pool_scales:
            raise ValueError("channel counts must be positive and pool_scales non-empty")
        self.channels, self.pool_scales, self.shared_key = channels, tuple(pool_scales), shared_key
        self.query = ConvNormAct(query_channels, channels, norm_layer)  # W_q + BN + ReLU: C_q -> C'
        self.key = self.query if shared_key else ConvNormAct(key_channels, channels, norm_layer)  # W_k: C_k -> C'
        self.value = nn.Conv2d(key_channels, channels, 1)  # W_v: C_k -> C'
        self.out = nn.Conv2d(channels, out_channels, 1)  # W_out: C' -> C_out
        nn.init.zeros_(self.out.weight)  # mmseg's constant_init(out_project, 0)
        if self.out.bias is not None:
            nn.init.zeros_(self.out.bias)
        self.bottleneck = ConvNormAct(out_channels + query_channels, out_channels, norm_layer, act=bottleneck_act)

    def attend(self, xq: Tensor, xk: Tensor) -> Tensor:
        """out = bottleneck([W_out y ; xq]) for queries from xq (N, C_q, H, W), cells from xk (N, C_k, Hk, Wk)."""
        N, _, H, W = xq.shape
        q = self.query(xq)  # (N, C', H, W)
        # The shared projection of APNB is called again on the key map in training, as mmseg does (BatchNorm's
        # running statistics move twice); in evaluation its output is the query's.
        k = q if self.shared_key and xk is xq and not self.training else self.key(xk)
        keys = pyramid_pool(k, self.pool_scales)  # (N, C', Hk, Wk) -> (N, C', 110); channel-first throughout
        values = pyramid_pool(pointwise_conv(xk, self.value), self.pool_scales)  # (N, C', 110)
        q = q.flatten(2)  # (N, C', P)
        sim = (q.transpose(1, 2) @ keys) * self.channels**-0.5  # (N, P, C') @ (N, C', 110) -> (N, P, 110)
        y = values @ torch.softmax(sim, dim=-1).transpose(1, 2)  # (N, C', 110) @ (N, 110, P) -> (N, C', P)
        y_tokens = y.transpose(1, 2)  # (N, P, C'): the captured output, on the path to the loss (dL/dy exists)
        self.publish(lambda: self.capture(q, keys, values, y_tokens, (H, W), tuple(xk.shape[-2:])))
        y_map = y_tokens.transpose(1, 2).reshape(N, self.channels, H, W)  # y's memory: channels last
        context = pointwise_conv(y_map, self.out)  # (N, C_out, H, W)
        return self.bottleneck(torch.cat([context, xq], dim=1))

    def capture(self, q: Tensor, keys: Tensor, values: Tensor, y: Tensor, size, key_grid):
        """The factors from the channel-first q (N, C', P), keys, values (N, C', 110) and the tokens y (N, P, C')."""
        cells = TokenKeys("pyramid cells", pyramid_cover(key_grid, self.pool_scales, q.device, q.dtype)[None], key_grid)
        q, keys, values = (t.transpose(1, 2) for t in (q, keys, values))  # tokens: (N, P or 110, C')
        return implicit_split(q * self.channels**-0.5, keys, values, y, size, (keys.shape[1], 1), self.combine, cells)


class AsymmetricPyramidNonLocal2d(PyramidNonLocal):
    """ANN's APNB, (N, C, H, W) -> (N, C_out, H, W): self-attention over the map's own pyramid cells.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction query/key/value channels (mmseg's ANNHead: ``project_channels`` 256 of 512).
        out_channels: C_out (None: C).
        pool_scales: the pyramid's grids (1, 3, 6, 8: 110 cells).
        norm_layer: the norm of the projections and of the bottleneck.
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {
        "query": ("query",),
        "key": (),
        "out": ("out", "bottleneck"),
    }

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        out_channels: int | None = None,
        pool_scales: Sequence[int] = POOL_SCALES,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        if reduction <= 0 or in_channels % reduction:
            raise ValueError(f"in_channels={in_channels} must be a positive multiple of reduction={reduction}")
        channels = in_channels // reduction
        out = out_channels or in_channels
        super().__init__(in_channels, in_channels, channels, out, pool_scales, norm_layer, True, True)

    def forward(self, x: Tensor) -> Tensor:
        return self.attend(x, x)


class AsymmetricFusionNonLocal2d(PyramidNonLocal):
    """ANN's AFNB, (low (N, C_low, Hk, Wk), high (N, C_high, H, W)) -> (N, C_out, H, W): the high-level map's pixels
    attend to the low-level map's pyramid cells (mmseg's argument order: low first).

    Args:
        low_channels: C_low, channels of the key/value map (ResNet stage 3: 1024).
        high_channels: C_high, channels of the query map (stage 4: 2048).
        channels: C' of the query/key/value (mmseg's ANNHead: ``project_channels`` 256).
        out_channels: C_out (None: C_high, as ANNHead).
        pool_scales: the pyramid's grids (1, 3, 6, 8: 110 cells).
        norm_layer: the norm of the projections and of the bottleneck.
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"out": ("out", "bottleneck")}

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        channels: int = 256,
        out_channels: int | None = None,
        pool_scales: Sequence[int] = POOL_SCALES,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        out = out_channels or high_channels
        super().__init__(high_channels, low_channels, channels, out, pool_scales, norm_layer, False, False)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return self.attend(high, low)
