"""Whiten: which kinds carry a BatchNorm (with or without affine), and its running statistics in eval mode."""

import pytest
import torch

from dnlseg.context.whitening import WHITENINGS, Whiten


def test_only_the_batchnorm_kinds_have_a_norm_and_only_bn_affine_learns_an_affine():
    norms = {kind: Whiten(kind, 4).norm for kind in WHITENINGS}
    assert {kind for kind, norm in norms.items() if norm is not None} == {"bn", "bn_affine"}
    assert norms["bn"].affine is False and norms["bn_affine"].affine is True
    assert norms["bn"].num_features == 4


def test_batchnorm_whitening_in_eval_mode_uses_the_running_statistics_per_channel():
    module = Whiten("bn", 3).eval()
    module.norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    module.norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    t = torch.tensor([[[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]])  # (N=1, P=2, Cq=3)
    expected = (t - torch.tensor([1.0, 2.0, 3.0])) / torch.sqrt(torch.tensor([4.0, 1.0, 0.25]) + 1e-5)
    torch.testing.assert_close(module(t), expected)


def test_an_unknown_kind_raises_listing_the_kinds():
    with pytest.raises(ValueError, match=r"^whitening='layer' is not one of 'channel', 'spatial', 'ln_nostd'"):
        Whiten("layer", 4)
