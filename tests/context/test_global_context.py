"""GlobalContext2d computes GCNet's block (docs/science.md section 3): attention pooling, bottleneck transform, add."""

import pytest
import torch
import torch.nn.functional as F

from dnlseg.context import GlobalContext2d, capture_attention


def reference_global_context(block: GlobalContext2d, x):
    """The formula written out: c = sum_j softmax_j(W_k x_j) x_j; out = x + W_2 ReLU(LN(W_1 c))."""
    N, C, H, W = x.shape
    xf = x.flatten(2)  # (N, C, P)
    logits = torch.einsum("c,ncp->np", block.unary.weight[0, :, 0, 0], xf) + block.unary.bias  # (N, P)
    context = torch.einsum("np,ncp->nc", torch.softmax(logits, dim=-1), xf)  # (N, C)
    conv1, norm, _, conv2 = block.out
    hidden = context @ conv1.weight[:, :, 0, 0].T + conv1.bias  # (N, C / r)
    mean, var = hidden.mean(-1, keepdim=True), hidden.var(-1, unbiased=False, keepdim=True)
    hidden = (hidden - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, 0, 0] + norm.bias[:, 0, 0]
    delta = F.relu(hidden) @ conv2.weight[:, :, 0, 0].T + conv2.bias  # (N, C)
    return x + delta[:, :, None, None]


def test_global_context_matches_formula():
    torch.manual_seed(0)
    block = GlobalContext2d(8, reduction=2).double()
    for parameter in block.parameters():  # every parameter random, the zero-initialised last conv included
        torch.nn.init.normal_(parameter)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference_global_context(block, x), rtol=1e-10, atol=1e-10)


def test_global_context_is_its_unary_term_in_the_contract():
    torch.manual_seed(0)
    block = GlobalContext2d(8)
    x = torch.randn(2, 8, 3, 5)
    with capture_attention(block) as captured:
        block(x)
    ((record,),) = captured.values()
    assert record.pairwise_query is None and record.pairwise_logits() is None
    assert record.unary_logits.shape == (2, 1, 15) and record.output.shape == (2, 1, 8)
    expected = torch.softmax(block.unary(x).flatten(1), dim=-1)  # (N, P)
    torch.testing.assert_close(record.unary_attention(), expected)
    assert set(block.branches()) == {"unary", "out"}


@pytest.mark.parametrize("kwargs", [dict(in_channels=10, reduction=4), dict(in_channels=8, reduction=0)])
def test_bad_arguments_raise_clear_value_error(kwargs):
    with pytest.raises(ValueError, match="must be a positive multiple of reduction"):
        GlobalContext2d(**kwargs)


def test_the_default_bottleneck_is_a_quarter_of_the_channels_and_the_smallest_block_is_allowed():
    block = GlobalContext2d(8)
    assert (block.in_channels, block.out[0].out_channels, block.out[-1].in_channels) == (8, 2, 2)
    assert block.out[1].normalized_shape == (2, 1, 1)
    assert GlobalContext2d(1, reduction=1).out[0].out_channels == 1
    with pytest.raises(ValueError, match=r"^in_channels=0 must be a positive multiple of reduction=1 \(the"):
        GlobalContext2d(0, reduction=1)
    with pytest.raises(ValueError, match="in_channels=-4 must be a positive multiple of reduction=-2"):
        GlobalContext2d(-4, reduction=-2)


def test_captured_factors_are_the_input_tokens_on_the_query_grid_and_combine_is_the_unary_softmax():
    torch.manual_seed(0)
    block = GlobalContext2d(4, reduction=2)
    x = torch.randn(1, 4, 2, 3)
    with capture_attention(block) as captured:
        block(x)
    ((record,),) = captured.values()
    assert record.query_size == (2, 3) and record.key_size == (2, 3)
    torch.testing.assert_close(record.values, x.flatten(2).transpose(1, 2))  # (N, P, C): the values are x itself
    u = block.unary(x).flatten(2)  # (N, 1, P)
    torch.testing.assert_close(record.unary_logits, u)
    torch.testing.assert_close(record.output, torch.softmax(u, -1) @ record.values)
    torch.testing.assert_close(record.weights(), torch.softmax(u, dim=-1))
    torch.testing.assert_close(block.combine(None, u), torch.softmax(u, dim=-1))


def test_only_the_transforms_last_conv_starts_at_zero_and_its_layer_norm_at_the_identity():
    """GC starts as the identity because W_2 is zero (GCNet's init), not because the LayerNorm is switched off."""
    block = GlobalContext2d(16)
    first, norm, _, last = block.out
    assert torch.count_nonzero(last.weight) == 0 and torch.count_nonzero(last.bias) == 0
    assert torch.equal(norm.weight, torch.ones_like(norm.weight)) and torch.count_nonzero(norm.bias) == 0
    assert torch.count_nonzero(first.weight) == first.weight.numel()  # W_1 keeps its random init
