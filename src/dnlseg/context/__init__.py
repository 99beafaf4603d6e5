"""Context blocks (NL, DNL and its ablations, GCNet's global context), the table of variants, and the one contract
through which analyses see a block's attention (``capture_attention``, ``ContextBlock``: ``dnlseg.context.base``)."""

from dnlseg.context.attention import fused_attention, tokens
from dnlseg.context.base import (
    BRANCHES,
    CapturedAttention,
    ContextBlock,
    capture_attention,
    find_context_blocks,
    select_rows,
)
from dnlseg.context.disentangled_non_local import DisentangledNonLocal2d
from dnlseg.context.global_context import GlobalContext2d
from dnlseg.context.non_local import NonLocal2d
from dnlseg.context.non_local_base import NonLocalBase
from dnlseg.context.variants import VARIANTS, Variant, variant_of

__all__ = [
    "BRANCHES",
    "VARIANTS",
    "CapturedAttention",
    "ContextBlock",
    "DisentangledNonLocal2d",
    "GlobalContext2d",
    "NonLocal2d",
    "NonLocalBase",
    "Variant",
    "capture_attention",
    "find_context_blocks",
    "fused_attention",
    "select_rows",
    "tokens",
    "variant_of",
]
