"""The decode heads of docs/science.md section 4: the context head around its block, and the auxiliary FCN head."""

import pytest
import torch
from torch import nn

from dnlseg.context import DisentangledNonLocal2d
from dnlseg.models.heads import ContextHead, FCNHead, conv_bn_relu


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_bn_relu_keeps_the_size_has_no_conv_bias_and_is_non_negative(kernel_size):
    block = conv_bn_relu(4, 6, kernel_size)
    conv, bn, relu = block
    assert (conv.kernel_size, conv.padding, conv.bias) == ((kernel_size,) * 2, (kernel_size // 2,) * 2, None)
    assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == 6 and isinstance(relu, nn.ReLU)
    y = block(torch.randn(2, 4, 5, 7))
    assert y.shape == (2, 6, 5, 7) and (y >= 0).all() and (y > 0).any()


def test_context_head_is_conv_block_conv_concat_fuse_dropout_classifier():
    torch.manual_seed(0)
    head = ContextHead(
        in_channels=10, channels=8, num_classes=3, context=lambda c: DisentangledNonLocal2d(c, reduction=2), dropout=0.5
    ).eval()
    nn.init.ones_(head.context.out_norm.weight)  # the block is not the identity
    x = torch.randn(2, 10, 4, 6)
    y = head.conv_out(head.context(head.conv_in(x)))
    expected = head.classifier(head.fuse(torch.cat([x, y], dim=1)))  # eval: dropout off
    torch.testing.assert_close(head(x), expected)
    assert expected.shape == (2, 3, 4, 6) and head.classifier.kernel_size == (1, 1)
    assert head.fuse[0].in_channels == 18 and head.classifier.out_channels == 3 and head.dropout.p == 0.5
    assert isinstance(head.context, DisentangledNonLocal2d) and head.context.in_channels == 8


def test_baseline_head_has_an_identity_where_the_block_was():
    head = ContextHead(in_channels=10, channels=8, num_classes=3).eval()
    assert isinstance(head.context, nn.Identity)
    x = torch.randn(1, 10, 4, 6)
    expected = head.classifier(head.fuse(torch.cat([x, head.conv_out(head.conv_in(x))], dim=1)))
    torch.testing.assert_close(head(x), expected)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    head = FCNHead(in_channels=6, channels=4, num_classes=2, dropout=0.5)
    x = torch.randn(2, 6, 5, 5)
    assert head.eval()(x).shape == (2, 2, 5, 5) and head.classifier.kernel_size == (1, 1)
    torch.testing.assert_close(head(x), head.classifier(head.conv(x)))
    assert head.dropout.p == 0.5 and head.conv[0].out_channels == 4
    head.train()
    assert not torch.allclose(head(x), head(x))  # two Dropout2d draws


def test_default_dropout_is_0_1_in_both_heads():
    assert (
        FCNHead(in_channels=6, channels=4, num_classes=2).dropout.p == 0.1
        and ContextHead(in_channels=6, channels=4, num_classes=2).dropout.p == 0.1
    )


def test_a_head_without_a_block_mmseg_names_gives_no_name_for_a_context():
    """The baseline head (no block) maps its convs to mmseg's FCNHead layout and names no ``context``: a key of a
    block mmseg's FCN-layout heads do not hold keeps its own name instead of a ``None`` one."""
    head = ContextHead(in_channels=6, channels=4, num_classes=2)
    assert "context" not in head.mmseg_names and None not in head.mmseg_names.values()
    dnl = ContextHead(in_channels=6, channels=4, num_classes=2, context=lambda c: DisentangledNonLocal2d(c, 2))
    assert dnl.mmseg_names["context"] == "dnl_block"
