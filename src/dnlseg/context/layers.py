"""Small layers the attention blocks of docs/science.md section 7 share: a 1x1 conv + norm + ReLU laid out as
mmcv's ``ConvModule`` (``conv``, ``bn``: the same state-dict keys) and the pyramid pooling of ANN's keys."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


class ConvNormAct(nn.Module):
    """A k x k conv (1x1 unless ``kernel_size``; size-preserving padding), then ``norm_layer`` (the conv without a
    bias, as under a norm) and ReLU when ``act``.

    The layers of mmcv's ``ConvModule(in, out, k, padding=k // 2, norm_cfg=BN, act_cfg=ReLU)`` in its order, with
    its submodule names ``conv`` and ``bn``: a state dict of one loads into the other unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm_layer: NormLayer | None,
        act: bool = True,
        kernel_size: int = 1,
    ) -> None:
        super().__init__()
        bias = norm_layer is None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.bn = norm_layer(out_channels) if norm_layer is not None else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


def conv_norm_acts(in_channels: int, out_channels: int, count: int, norm_layer: NormLayer | None) -> nn.Sequential:
    """``count`` ``ConvNormAct`` in a row, in -> out -> out ... (mmseg's ``key_query_num_convs``)."""
    layers = [ConvNormAct(in_channels if i == 0 else out_channels, out_channels, norm_layer) for i in range(count)]
    return nn.Sequential(*layers)


def pyramid_pool(x: Tensor, scales: Sequence[int]) -> Tensor:
    """ANN's pyramid pooling: x (N, C, H, W) average-pooled to s x s for every s in ``scales``, flattened and
    concatenated -> (N, C, sum s^2) (1, 3, 6, 8: 110 cells).

    Under ``torch.export`` (``dnlseg export``) it is the product with ``pyramid_cover``, the same averages: ONNX has
    no adaptive pooling, and the exporter's lowering of it is wrong where the size does not divide by s."""
    if torch.compiler.is_exporting():
        cover = pyramid_cover((x.shape[-2], x.shape[-1]), scales, x.device, x.dtype)  # (S, H W)
        return x.flatten(2) @ cover.transpose(0, 1)  # (N, C, H W) @ (H W, S) -> (N, C, S)
    return torch.cat([F.adaptive_avg_pool2d(x, s).flatten(2) for s in scales], dim=2)


def pyramid_cover(size: tuple[int, int], scales: Sequence[int], device=None, dtype=None) -> Tensor:
    """The pixels each pyramid cell averages: (sum s^2, H W), row c = the weights of cell c on the (H, W) grid.

    Adaptive average pooling's bins: along an axis of length L, bin i of s spans [floor(i L / s), ceil((i + 1) L / s)),
    so that ``pyramid_cover(...) @ x_tokens == pyramid_pool(x).transpose(1, 2)``.
    """

    def bins(length: int, s: int) -> Tensor:
        i = torch.arange(s, device=device)[:, None]
        start, end = (i * length) // s, -((-(i + 1) * length) // s)  # floor, ceil
        position = torch.arange(length, device=device)
        inside = (position >= start) & (position < end)  # (s, L)
        return inside.to(dtype or torch.float32) / (end - start).to(dtype or torch.float32)

    H, W = size
    cells = [(bins(H, s)[:, None, :, None] * bins(W, s)[None, :, None, :]).reshape(s * s, H * W) for s in scales]
    return torch.cat(cells, dim=0)
