"""EMANet's head (``dnlseg.models.heads.expectation_maximization``): its defaults and options (its maths: the mmseg
parity tests in tests/models/test_mmseg_heads.py)."""

import torch

from dnlseg.models.heads import EMAHead


def test_the_defaults_are_mmsegs_emanet_config():
    head = EMAHead([3, 8], 2)
    attention = head.attention
    assert head.ema_in_conv.conv.out_channels == 512 and head.bottleneck.conv.out_channels == 256
    assert (attention.num_bases, attention.num_stages, attention.momentum) == (64, 3, 0.1)
    assert head.conv_cat is not None and head.conv_cat.conv.in_channels == 8 + 256 and head.dropout.p == 0.1


def test_the_options_reach_the_unit_and_the_bottleneck():
    head = EMAHead([3, 8], 2, 16, 0.3, out_channels=6, num_bases=4, num_stages=2, momentum=0.2, concat_input=False)
    attention = head.attention
    assert (attention.num_bases, attention.num_stages, attention.momentum, head.dropout.p) == (4, 2, 0.2, 0.3)
    assert head.bottleneck.conv.out_channels == head.conv_seg.in_channels == 6 and head.conv_cat is None


def test_without_concat_input_the_classifier_reads_the_bottleneck():
    torch.manual_seed(0)
    head = EMAHead([3, 8], 3, 16, num_bases=4, concat_input=False).eval()
    x = torch.randn(1, 8, 4, 5)
    expected = head.conv_seg(head.bottleneck(head.attention(head.ema_in_conv(x))))
    torch.testing.assert_close(head(x), expected)
