"""ISA's head (``dnlseg.models.heads.interlaced_sparse``): its defaults and options (its maths: the mmseg parity
tests in tests/models/test_mmseg_heads.py)."""

from dnlseg.models.heads import ISAHead


def test_the_defaults_are_mmsegs_isanet_config():
    head = ISAHead([3, 8], 2)
    assert head.in_conv.conv.out_channels == 512 and head.attention.long_range.channels == 256
    assert head.attention.group_size == (8, 8) and head.dropout.p == 0.1


def test_the_options_reach_the_attention():
    head = ISAHead([3, 8], 2, 16, 0.3, reduction=4, group_size=(2, 3))
    assert (head.attention.short_range.channels, head.attention.group_size, head.dropout.p) == (4, (2, 3), 0.3)
    assert head.out_conv.conv.in_channels == 32
