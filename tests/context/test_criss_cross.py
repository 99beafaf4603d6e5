"""CCNet's criss-cross attention (``dnlseg.context.criss_cross``): its arguments (the maths: the block contract, the
mmcv parity and the key-set tests)."""

import pytest

from dnlseg.context import CrissCrossAttention2d


def test_a_recurrence_under_one_is_refused():
    with pytest.raises(ValueError, match="recurrence=0 must be at least 1"):
        CrissCrossAttention2d(16, recurrence=0)


def test_an_unknown_attention_path_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="attention='sparse' is not one of 'fused', 'materialized'"):
        CrissCrossAttention2d(16, attention="sparse")
