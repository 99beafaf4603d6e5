"""Small layers the attention blocks of docs/science.md section 7 share: a 1x1 conv + norm + ReLU laid out as
mmcv's ``ConvModule`` (``conv``, ``bn``: the same state-dict keys), the 1x1 conv as matrix products on CPU, and the
pyramid pooling of ANN's keys."""

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
        x = pointwise_conv(x, self.conv)  # a k x k conv (k > 1) runs as itself
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


def pointwise_conv(x: Tensor, conv: nn.Conv2d) -> Tensor:
    """``conv`` on x (N, C, H, W); a 1x1 convolution (stride 1, no padding, one group) on CPU as matrix products:

        contiguous x:     y_n = W x_n + b       (C_out, C) @ (C, P), one product per image
        channels-last x:  y = x W^T + b         (N P, C) @ (C, C_out), one product; y channels last as x

    oneDNN's 1x1 convolution takes longer on such maps, forward and backward (benchmarks/pointwise_conv.md). Any
    other layout or device, any other convolution, and a traced or exported graph (the loop would freeze the batch
    size), get ``conv`` itself."""
    pointwise = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
    if not pointwise or x.device.type != "cpu" or torch.jit.is_tracing() or torch.compiler.is_exporting():
        return conv(x)
    N, C, H, W = x.shape
    weight = conv.weight.flatten(1)  # (C_out, C)
    if x.is_contiguous():
        images = x.reshape(N, C, H * W).unbind(0)

        def product(image: Tensor) -> Tensor:  # (C, P) -> (C_out, P)
            return weight @ image if conv.bias is None else torch.addmm(conv.bias[:, None], weight, image)

        y = product(images[0]).unsqueeze(0) if N == 1 else torch.stack([product(image) for image in images])
        return y.view(N, -1, H, W)
    if x.is_contiguous(memory_format=torch.channels_last):
        pixels = x.permute(0, 2, 3, 1).reshape(N * H * W, C)  # (N P, C), a view
        y = pixels @ weight.t() if conv.bias is None else torch.addmm(conv.bias, pixels, weight.t())
        return y.view(N, H, W, -1).permute(0, 3, 1, 2)  # (N, C_out, H, W) in channels-last memory
    return conv(x)


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
