"""ISA's interlaced sparse self-attention (Huang et al., arXiv 1907.12273, Sec. 3), docs/science.md section 7.

The map is padded to whole groups of gh x gw pixels (8 x 8; zeros, split evenly between the two sides, the odd pixel
after, as mmseg's ISAHead), then attends twice, each time within groups, with its own weights:

    long range   group = the pixels at the same offset (a, b) in every gh x gw tile: Hp / gh x Wp / gw of them
    short range  group = the pixels of one gh x gw tile
    q = ReLU(BN(W_q2 ReLU(BN(W_q1 x)))),  k likewise       (N, C', P) two conv + BN + ReLU each
    v = W_v x                                              (N, C, P), a 1x1 conv with bias
    w_ij = softmax_{j in group(i)}( q_i . k_j / sqrt(C') )
    out_i = ReLU(BN(W_out sum_j w_ij v_j))                 (no residual: ISAHead concatenates its input after)

and the padding is cropped off. The padded pixels are keys like any other (their zeros go through the convs). Each
stage is a ``ContextBlock`` of its own (``long_range``, ``short_range``) publishing ``GroupKeys`` on the padded grid.

mmseg 1.2.2: the middle of ``ISAHead.forward`` (between ``in_conv`` and ``out_conv``), modules ``global_relation``
and ``local_relation``, keys ``{query,key,value}_project`` and ``output_project`` -> ours ``long_range`` and
``short_range`` with ``query``, ``key``, ``value``, ``out`` (``ConvModule``'s ``conv``/``bn`` kept).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.context.attention import tokens
from dnlseg.context.base import CoupledAttention, check_choice, implicit_split
from dnlseg.context.keys import GroupKeys, grouped_attention
from dnlseg.context.layers import ConvNormAct, NormLayer, conv_norm_acts, pointwise_conv

Range = Literal["long", "short"]
RANGES = ("long", "short")
STAGE_NAMES = {"query": "query_project", "key": "key_project", "value": "value_project", "out": "output_project"}


class GroupAttention2d(CoupledAttention):
    """One stage of ISA: attention within the groups of ``group_range`` on a map of whole gh x gw tiles,
    (N, C, Hp, Wp) -> (N, C, Hp, Wp).

    Args:
        in_channels: C.
        channels: C' of the query and key (mmseg's ``isa_channels``).
        group_range: "long" (the same offset in every tile) or "short" (one tile).
        group_size: (gh, gw), the tile (ISA: 8 x 8).
        norm_layer: the norm after each conv of the query, key and output.
    """

    mmseg_names: ClassVar[dict[str, str]] = STAGE_NAMES

    def __init__(
        self,
        in_channels: int,
        channels: int,
        group_range: Range,
        group_size: tuple[int, int] = (8, 8),
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        check_choice("group_range", group_range, RANGES)
        self.channels, self.group_range = channels, group_range
        self.group_size: tuple[int, int] = (group_size[0], group_size[1])  # a YAML list arrives as a list
        self.query = conv_norm_acts(in_channels, channels, 2, norm_layer)  # C -> C' -> C'
        self.key = conv_norm_acts(in_channels, channels, 2, norm_layer)
        self.value = nn.Conv2d(in_channels, in_channels, 1)  # W_v: C -> C
        self.out = ConvNormAct(in_channels, in_channels, norm_layer)  # W_out + BN + ReLU: C -> C

    def keys(self, size: tuple[int, int], image: tuple[int, int, int, int], device) -> GroupKeys:
        """The groups of this stage on the padded (Hp, Wp) grid."""
        (Hp, Wp), (gh, gw) = size, self.group_size
        position = torch.arange(Hp * Wp, device=device).view(Hp // gh, gh, Wp // gw, gw)  # (tile row, a, col, b)
        if self.group_range == "long":  # group (a, b), members tile by tile
            order = position.permute(1, 3, 0, 2)
        else:  # group = a tile, members (a, b)
            order = position.permute(0, 2, 1, 3)
        groups = torch.empty(Hp * Wp, dtype=torch.long, device=device)
        members = order.shape[2] * order.shape[3]
        groups[order.flatten()] = torch.arange(Hp * Wp, device=device) // members
        return GroupKeys(size, groups, order.flatten(), image)

    def forward(self, x: Tensor, image: tuple[int, int, int, int] | None = None) -> Tensor:
        N, C, Hp, Wp = x.shape
        if not torch.compiler.is_exporting() and (Hp % self.group_size[0] or Wp % self.group_size[1]):
            raise ValueError(f"a {Hp} x {Wp} map is not made of whole {self.group_size} tiles: pad it first")
        keys = self.keys((Hp, Wp), image or (0, 0, Hp, Wp), x.device)
        q = tokens(self.query(x)) * self.channels**-0.5  # (N, P, C'), the logit scale folded in
        k, v = tokens(self.key(x)), tokens(pointwise_conv(x, self.value))  # (N, P, C'), (N, P, C)
        gh, gw = self.group_size
        members = (Hp // gh) * (Wp // gw) if self.group_range == "long" else gh * gw  # pixels per group
        y = grouped_attention(q, k, v, keys.order, members)  # (N, P, C): one (S, S) map per group
        self.publish(lambda: implicit_split(q, k, v, y, (Hp, Wp), (Hp, Wp), keys.restrict(self.combine), keys))
        return self.out(y.transpose(1, 2).reshape(N, C, Hp, Wp))


class InterlacedSparseAttention2d(nn.Module):
    """ISA's two stages on a padded map, (N, C, H, W) -> (N, C, H, W) (module docstring); not a residual block.

    Args:
        in_channels: C, channels of the input feature map.
        reduction: C' = C // reduction query/key channels (mmseg's ISAHead: ``isa_channels`` 256 of 512).
        group_size: (gh, gw), the tile (ISA and mmseg's ``down_factor``: 8 x 8).
        norm_layer: the norm after each conv.
    """

    attention_paths: ClassVar[tuple[str, ...]] = ()
    mmseg_names: ClassVar[dict[str, str]] = {
        f"{ours}.{branch}": f"{theirs}.{name}"
        for ours, theirs in (("long_range", "global_relation"), ("short_range", "local_relation"))
        for branch, name in STAGE_NAMES.items()
    }

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        group_size: tuple[int, int] = (8, 8),
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if in_channels <= 0 or reduction <= 0 or in_channels % reduction:
            raise ValueError(f"in_channels={in_channels} must be a positive multiple of reduction={reduction}")
        if len(group_size) != 2 or min(group_size) <= 0:
            raise ValueError(f"group_size={tuple(group_size)} must be two positive sizes (height, width)")
        self.group_size: tuple[int, int] = (group_size[0], group_size[1])  # a YAML list arrives as a list
        channels = in_channels // reduction
        self.long_range = GroupAttention2d(in_channels, channels, "long", self.group_size, norm_layer)
        self.short_range = GroupAttention2d(in_channels, channels, "short", self.group_size, norm_layer)

    def forward(self, x: Tensor) -> Tensor:
        N, C, H, W = x.shape
        (gh, gw) = self.group_size
        pad_h, pad_w = -H % gh, -W % gw  # to whole tiles; integer arithmetic, so an export keeps H, W symbolic
        top, left = pad_h // 2, pad_w // 2
        x = F.pad(x, (left, pad_w - left, top, pad_h - top))  # as mmseg's ISAHead (a no-op without padding)
        image = (top, left, H, W)
        x = self.short_range(self.long_range(x, image), image)
        return x[:, :, top : top + H, left : left + W]
