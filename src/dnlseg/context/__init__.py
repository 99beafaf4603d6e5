"""Context blocks: the plain Non-Local block and the Disentangled Non-Local block with its ablations."""

from dnlseg.context.base import AttentionMaps, ContextBlock, find_context_blocks
from dnlseg.context.disentangled_non_local import DisentangledNonLocal2d
from dnlseg.context.non_local import NonLocal2d

__all__ = ["AttentionMaps", "ContextBlock", "find_context_blocks", "DisentangledNonLocal2d", "NonLocal2d"]
