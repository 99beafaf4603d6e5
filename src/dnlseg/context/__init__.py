"""Context blocks (NL, DNL and its ablations, GCNet's global context; DANet's, CCNet's, ANN's, ISA's, EMANet's and
OCR's attention), the tables of variants and blocks, and the one contract through which analyses see a block's
attention (``capture_attention``, ``ContextBlock``: ``dnlseg.context.base``; key sets: ``dnlseg.context.keys``)."""

from dnlseg.context.asymmetric_non_local import AsymmetricFusionNonLocal2d, AsymmetricPyramidNonLocal2d
from dnlseg.context.attention import fused_attention, tokens
from dnlseg.context.base import (
    ANALYSES,
    BRANCHES,
    CapturedAttention,
    ContextBlock,
    CoupledAttention,
    capture_attention,
    find_context_blocks,
    from_mmseg,
    select_rows,
)
from dnlseg.context.channel_attention import ChannelAttention2d
from dnlseg.context.criss_cross import CrissCrossAttention2d
from dnlseg.context.disentangled_non_local import DisentangledNonLocal2d
from dnlseg.context.expectation_maximization import ExpectationMaximizationAttention2d
from dnlseg.context.global_context import GlobalContext2d
from dnlseg.context.interlaced_sparse import GroupAttention2d, InterlacedSparseAttention2d
from dnlseg.context.keys import CrissCrossKeys, GridKeys, GroupKeys, KeySet, TokenKeys
from dnlseg.context.non_local import NonLocal2d
from dnlseg.context.non_local_base import NonLocalBase
from dnlseg.context.object_context import ObjectContextAttention2d
from dnlseg.context.position_attention import PositionAttention2d
from dnlseg.context.variants import BLOCKS, VARIANTS, Block, Variant, variant_of

__all__ = [
    "ANALYSES",
    "BLOCKS",
    "BRANCHES",
    "VARIANTS",
    "AsymmetricFusionNonLocal2d",
    "AsymmetricPyramidNonLocal2d",
    "Block",
    "CapturedAttention",
    "ChannelAttention2d",
    "ContextBlock",
    "CoupledAttention",
    "CrissCrossAttention2d",
    "CrissCrossKeys",
    "DisentangledNonLocal2d",
    "ExpectationMaximizationAttention2d",
    "GlobalContext2d",
    "GridKeys",
    "GroupAttention2d",
    "GroupKeys",
    "InterlacedSparseAttention2d",
    "KeySet",
    "NonLocal2d",
    "NonLocalBase",
    "ObjectContextAttention2d",
    "PositionAttention2d",
    "TokenKeys",
    "Variant",
    "capture_attention",
    "find_context_blocks",
    "from_mmseg",
    "fused_attention",
    "select_rows",
    "tokens",
    "variant_of",
]
