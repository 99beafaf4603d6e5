"""What the non-local blocks (NL, DNL) share: the value and output branches, the zero-initialised output norm,
the optional 2x2 pooling of keys/values, and the choice of attention path. Shape legend: ``dnlseg.context.base``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.context.base import ContextBlock, check_choice

AttentionPath = Literal["fused", "materialized"]
ATTENTION_PATHS = ("fused", "materialized")


class NonLocalBase(ContextBlock):
    """Base of the non-local blocks: ``out = x + out_norm(out(y))`` with y computed by the subclass.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction channels for query and key (and the value with ``use_out``).
        attention: "fused" computes sum_j w_ij v_j without building the (P, Pk) matrix;
            "materialized" builds it (a reference for tests and benchmarks).
        downsample: 2x2 max-pool of the input of keys/values (and unary), Pk ~ P / 4.
        norm_layer: norm after ``out``, built as ``norm_layer(C)``; None: no norm.
        use_out: True: the value maps C -> C' and ``out`` maps C' -> C; False (an option of the official code): the
            value maps C -> C and there is no ``out`` conv, ``out = x + out_norm(y)``.
        zero_init: zero-initialise the last layer (the norm, else ``out``, else the value) so the block starts as
            the identity; False keeps the layers' default initialisation (the official code's ``out_bn``).
    """

    branch_modules: ClassVar[dict[str, tuple[str, ...]]] = {"out": ("out", "out_norm")}
    attention_paths: ClassVar[tuple[str, ...]] = ATTENTION_PATHS
    mmseg_names: ClassVar[dict[str, str]] = {  # mmcv's NonLocal2d / mmseg's DisentangledNonLocal2d (ConvModules)
        "value": "g.conv",
        "query": "theta.conv",
        "key": "phi.conv",
        "unary": "conv_mask",  # DNL's unary conv C -> 1, a plain conv
        "out": "conv_out.conv",
        "out_norm": "conv_out.bn",
    }

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        attention: AttentionPath = "fused",
        downsample: bool = False,
        norm_layer: Callable[[int], nn.Module] | None = nn.BatchNorm2d,
        use_out: bool = True,
        zero_init: bool = True,
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
        self.value_channels = self.channels if use_out else in_channels  # Cv
        self.attention = attention
        self.downsample = downsample

        # W_v: C -> Cv; without ``out`` it is the last conv, and a bias before a norm would be cancelled by it.
        self.value = nn.Conv2d(in_channels, self.value_channels, 1, bias=use_out or norm_layer is None)
        # W_out: Cv -> C; a bias before the norm would be cancelled by it (mmseg's ConvModule leaves it out too)
        self.out = nn.Conv2d(self.channels, in_channels, 1, bias=norm_layer is None) if use_out else None
        self.out_norm = norm_layer(in_channels) if norm_layer is not None else nn.Identity()
        if zero_init:
            zero_target = self.out_norm if norm_layer is not None else self.out if use_out else self.value
            weight, bias = getattr(zero_target, "weight", None), getattr(zero_target, "bias", None)
            if not isinstance(weight, Tensor):
                raise ValueError(f"norm_layer {norm_layer!r} has no affine weight to zero-initialise")
            nn.init.zeros_(weight)
            if bias is not None:
                nn.init.zeros_(bias)

    @property
    def materialize(self) -> bool:
        return self.attention == "materialized"

    def key_input(self, x: Tensor) -> Tensor:
        """The feature map keys, values and unary logits are computed from: x, or x max-pooled 2x2."""
        return F.max_pool2d(x, 2, ceil_mode=True) if self.downsample else x

    def residual(self, x: Tensor, y: Tensor) -> Tensor:
        """out = x + Norm(W_out y);  y: (N, P, Cv) -> (N, Cv, H, W) -> (N, C, H, W)."""
        N, C, H, W = x.shape
        y = y.transpose(1, 2).reshape(N, self.value_channels, H, W)  # a view: channels-last strides
        if self.out is None:
            # torch 2.14.1's CPU batch_norm backward gives a wrong input gradient for such a view at N = 1 (its
            # batch stride is Cv, not Cv * P; caught by the contract suite's gradcheck): hand the norm a copy.
            return x + self.out_norm(y.contiguous())
        return x + self.out_norm(self.out(y))
