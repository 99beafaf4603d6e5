"""DANet's head (``dnlseg.models.heads.dual_attention``): its defaults and options (its maths: the mmseg parity tests
in tests/models/test_mmseg_heads.py)."""

import torch

from dnlseg.models.heads import DAHead, HeadOutput


def test_the_defaults_are_mmsegs_danet_config():
    head = DAHead([3, 8], 2)
    assert head.pam_in_conv.conv.out_channels == head.cam_in_conv.conv.out_channels == 512
    assert head.pam.channels == 512 // 8 and head.pam.attention == "fused" and head.dropout.p == 0.1
    assert head.side_loss_weights == {"pam": 1.0, "cam": 1.0}


def test_the_options_reach_both_branches():
    head = DAHead([3, 8], 2, 16, 0.3, pam_reduction=4, side_loss_weight=0.4, attention="materialized")
    assert (head.pam.channels, head.pam.attention, head.cam.in_channels, head.dropout.p) == (4, "materialized", 16, 0.3)
    assert head.side_loss_weights == {"pam": 0.4, "cam": 0.4}


def test_training_returns_each_branchs_own_classifier_beside_the_sum_and_evaluation_the_sum_only():
    torch.manual_seed(0)
    head = DAHead([3, 8], 3, 16, 0.0, pam_reduction=4)  # no dropout: the same outputs in training and below
    with torch.no_grad():
        head.pam.gamma.fill_(0.5), head.cam.gamma.fill_(0.7)
    x = torch.randn(2, 8, 4, 5)
    for training in (True, False):  # BatchNorm on the batch's statistics, then on its running ones
        head.train(training)
        out = head(x)
        pam = head.pam_out_conv(head.pam(head.pam_in_conv(x)))
        cam = head.cam_out_conv(head.cam(head.cam_in_conv(x)))
        if training:
            assert isinstance(out, HeadOutput) and out.side.keys() == {"pam", "cam"}
            torch.testing.assert_close(out.side["pam"], head.pam_conv_seg(pam))
            torch.testing.assert_close(out.side["cam"], head.cam_conv_seg(cam))
            out = out.logits
        torch.testing.assert_close(out, head.conv_seg(pam + cam))
