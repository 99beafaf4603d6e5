"""DANet's position attention (``dnlseg.context.position_attention``): its arguments (the maths: the block contract
and the mmseg parity tests)."""

import pytest

from dnlseg.context import PositionAttention2d


def test_an_unknown_attention_path_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="attention='sparse' is not one of 'fused', 'materialized'"):
        PositionAttention2d(16, attention="sparse")
