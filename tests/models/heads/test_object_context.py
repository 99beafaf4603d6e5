"""OCR's head (``dnlseg.models.heads.object_context``): its defaults and the coarse logits' resizing (its maths: the
mmseg parity tests in tests/models/test_mmseg_heads.py)."""

import torch
import torch.nn.functional as F

from dnlseg.models.heads import OCRHead


def test_the_defaults_are_mmsegs_ocrnet_config():
    head = OCRHead([3, 8], 2)
    assert head.bottleneck.conv.out_channels == 512 and head.attention.channels == 256
    assert head.attention.scale == 1.0 and head.dropout.p == 0.1 and head.inputs == ("last", "coarse")


def test_the_options_reach_the_attention():
    head = OCRHead([3, 8], 2, 16, 0.3, reduction=4, scale=2.0)
    assert (head.attention.channels, head.attention.scale, head.dropout.p) == (4, 2.0, 0.3)


def test_coarse_logits_of_another_size_are_resized_bilinearly_to_the_last_stage():
    torch.manual_seed(0)
    head = OCRHead([3, 8], 3, 16).eval()
    last, coarse = torch.randn(1, 8, 4, 6), torch.randn(1, 3, 8, 12)
    resized = F.interpolate(coarse, size=(4, 6), mode="bilinear", align_corners=False)
    expected = head.conv_seg(head.attention(head.bottleneck(last), resized))
    torch.testing.assert_close(head(last, coarse), expected)
    torch.testing.assert_close(head(last, resized), expected)  # the same size: used as it is
