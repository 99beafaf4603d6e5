"""The bases of the blocks: NonLocalBase (argument checks, initial state, identity at init) and ContextBlock with
``capture_attention`` (context/base.py)."""

import pytest
import torch
from torch import nn

from dnlseg.context import (
    CapturedAttention,
    DisentangledNonLocal2d,
    NonLocal2d,
    NonLocalBase,
    capture_attention,
    find_context_blocks,
)


@pytest.mark.parametrize("in_channels, reduction", [(0, 1), (8, 0), (-2, 1), (8, -1)])
def test_channels_and_reduction_must_be_positive(in_channels, reduction):
    with pytest.raises(ValueError, match=f"in_channels={in_channels} and reduction={reduction} must be positive"):
        NonLocalBase(in_channels, reduction)


def test_the_smallest_block_is_allowed_and_starts_fused():
    block = NonLocalBase(1, 1)
    assert (block.in_channels, block.channels, block.attention, block.downsample) == (1, 1, "fused", False)
    assert block.materialize is False
    assert NonLocalBase(8).channels == 4  # the default reduction is 2
    materialized = NonLocalBase(4, 2, attention="materialized")
    assert materialized.attention == "materialized" and materialized.materialize is True


def test_a_norm_without_a_bias_is_zero_initialised_through_its_weight():
    class ScaleOnly(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(channels, 1, 1))

        def forward(self, x):
            return x * self.weight

    block = NonLocal2d(4, norm_layer=ScaleOnly)
    assert torch.equal(block.out_norm.weight, torch.zeros(4, 1, 1))
    x = torch.randn(1, 4, 3, 3)
    torch.testing.assert_close(block(x), x)  # the identity at init


def test_blocks_pass_their_arguments_to_the_base():
    for cls in (NonLocal2d, DisentangledNonLocal2d):
        block = cls(8, reduction=4, attention="materialized", downsample=True, norm_layer=None)
        assert (block.channels, block.attention, block.downsample) == (2, "materialized", True)
        assert isinstance(block.out_norm, nn.Identity) and torch.equal(
            block.out.weight, torch.zeros_like(block.out.weight)
        )


def test_a_norm_without_an_affine_weight_is_refused():
    with pytest.raises(ValueError, match="norm_layer .* has no affine weight to zero-initialise"):
        NonLocal2d(4, norm_layer=lambda c: nn.BatchNorm2d(c, affine=False))


@pytest.mark.parametrize(
    ("use_out", "norm_layer", "value_bias", "out_bias", "zeroed"),
    [
        (True, nn.BatchNorm2d, True, False, "out_norm"),  # a bias before the norm would be cancelled by it
        (True, None, True, True, "out"),
        (False, nn.BatchNorm2d, False, None, "out_norm"),
        (False, None, True, None, "value"),
    ],
)
def test_biases_and_the_zero_initialised_layer_follow_use_out_and_the_norm(
    use_out, norm_layer, value_bias, out_bias, zeroed
):
    block = NonLocalBase(8, 2, norm_layer=norm_layer, use_out=use_out)
    assert block.value.out_channels == block.value_channels == (4 if use_out else 8)
    assert (block.value.bias is not None) == value_bias
    assert (None if block.out is None else block.out.bias is not None) == out_bias
    last = getattr(block, zeroed)
    assert torch.count_nonzero(last.weight) == 0
    assert last.bias is None or torch.count_nonzero(last.bias) == 0
    kept = NonLocalBase(8, 2, norm_layer=norm_layer, use_out=use_out, zero_init=False)
    assert torch.count_nonzero(getattr(kept, zeroed).weight) > 0  # the layer's default initialisation


def test_by_default_the_value_is_reduced_and_an_out_conv_restores_the_channels():
    block = NonLocalBase(8)  # reduction 2, use_out: the paper's W_v C -> C' and W_out C' -> C
    assert (block.value.in_channels, block.value.out_channels) == (8, 4)
    assert block.out is not None and (block.out.in_channels, block.out.out_channels) == (4, 8)


def test_channels_must_divide_by_the_reduction():
    with pytest.raises(ValueError, match=r"^in_channels=10 is not divisible by reduction=4: choose a reduction"):
        NonLocalBase(10, 4)


def test_keys_are_max_pooled_two_by_two_with_the_last_odd_row_and_column_kept():
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    pooled = NonLocalBase(1, 1, downsample=True).key_input(x)
    assert pooled.tolist() == [[[[6.0, 8.0, 9.0], [11.0, 13.0, 14.0]]]]
    assert NonLocalBase(1, 1).key_input(x) is x


def test_without_out_the_input_gradient_at_batch_one_is_right():
    """The norm gets a contiguous copy of y: torch 2.14.1's CPU batch_norm backward is wrong for the view at N = 1."""
    torch.manual_seed(0)
    block = NonLocal2d(2, reduction=1, use_out=False).double()
    nn.init.ones_(block.out_norm.weight)
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-6)


# -- ContextBlock and capture_attention (context/base.py) ----------------------------------------------------------


class Network(nn.Module):
    """Two blocks under a LightningModule-like ``network.`` prefix."""

    def __init__(self):
        super().__init__()
        self.network = nn.Module()
        self.network.first, self.network.second = NonLocal2d(4), DisentangledNonLocal2d(4)

    def forward(self, x):
        return self.network.second(self.network.first(x))


def test_blocks_are_found_by_their_name_without_the_network_prefix():
    assert list(find_context_blocks(Network())) == ["first", "second"]
    assert list(find_context_blocks(NonLocal2d(4))) == [""]


def test_max_calls_keeps_the_first_calls_of_each_block_and_captures_nest():
    model = Network().eval()
    x = torch.randn(1, 4, 3, 3)
    with capture_attention(model, max_calls=2) as two, capture_attention(model) as every:
        for _ in range(3):
            model(x)
        assert len(model.network.first._sinks) == 2
    assert [len(calls) for calls in two.values()] == [2, 2]
    assert [len(calls) for calls in every.values()] == [3, 3]
    assert not model.network.first._sinks and not model.network.second._sinks  # both captures closed
    with capture_attention(model, max_calls=1) as one:
        model(x), model(x[:, :, :2])
    assert [c.query_size for c in one["first"]] == [(3, 3)]


def test_a_capture_is_closed_when_the_forward_raises():
    model = Network()
    with pytest.raises(RuntimeError), capture_attention(model):
        model(torch.randn(1, 5, 3, 3))  # wrong channel count
    assert not model.network.first._sinks


def test_factors_are_built_only_while_a_capture_is_open():
    block = NonLocal2d(4)
    built = []
    block.publish(lambda: built.append(1))
    assert built == []
    with capture_attention(block):
        block.publish(lambda: built.append(1) or "record")
    assert built == [1]


def test_frozen_parameters_are_in_no_branch_and_a_fully_frozen_branch_is_left_out():
    block = DisentangledNonLocal2d(4)
    block.query.weight.requires_grad_(False)
    block.unary.requires_grad_(False)
    branches = block.branches()
    assert branches["query"] == [block.query.bias] and "unary" not in branches
    assert branches["out"] == [block.out.weight, *block.out_norm.parameters()]  # the out conv has no bias


def test_captured_softmaxes_are_computed_in_float32_from_half_precision_factors():
    logits = torch.randn(1, 2, 3).half()
    record = CapturedAttention(logits, torch.eye(3).half()[None], logits[:, :1], logits, logits, (1, 2), (1, 3), None)
    assert record.pairwise_attention().dtype == torch.float32 and record.unary_attention().dtype == torch.float32
    torch.testing.assert_close(record.pairwise_attention(), torch.softmax(logits.float(), -1), atol=1e-3, rtol=0)
    values = torch.tensor([[[1.0], [0.0], [0.0]]]).half()
    mass = record.pairwise_mass(values)
    assert mass.dtype == torch.float32
    torch.testing.assert_close(mass, torch.softmax(logits.float(), -1)[..., :1], atol=1e-3, rtol=0)


def test_captured_softmaxes_keep_float64_factors_in_float64():
    logits = torch.randn(1, 2, 3, dtype=torch.float64)
    record = CapturedAttention(logits, torch.eye(3, dtype=torch.float64)[None], logits[:, :1], logits, logits,
                               (1, 2), (1, 3), None)  # fmt: skip
    assert record.pairwise_attention().dtype == torch.float64 and record.unary_attention().dtype == torch.float64
    torch.testing.assert_close(record.pairwise_attention(), torch.softmax(logits, -1), atol=1e-12, rtol=0)
    torch.testing.assert_close(record.unary_attention(), torch.softmax(logits[:, 0], -1), atol=1e-12, rtol=0)


def test_captured_pairwise_attention_of_sampled_rows_is_the_softmax_of_those_rows():
    q, k = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    record = CapturedAttention(q, k, None, torch.randn(2, 4, 1), torch.randn(2, 5, 1), (1, 5), (1, 4), None)
    rows = torch.tensor([[4, 0], [2, 2]])
    full = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # (N, P, Pk)
    expected = torch.stack([full[0, [4, 0]], full[1, [2, 2]]])
    torch.testing.assert_close(record.pairwise_attention(rows), expected)


def test_a_capture_without_a_pairwise_term_has_no_pairwise_attention_and_no_weights():
    u = torch.randn(1, 1, 4)
    record = CapturedAttention(None, None, u, torch.randn(1, 4, 2), torch.randn(1, 1, 2), (2, 2), (2, 2), None)
    assert record.pairwise_logits() is None and record.pairwise_attention() is None
    assert record.pairwise_mass(torch.ones(1, 4, 1)) is None
    torch.testing.assert_close(record.unary_attention(), torch.softmax(u[:, 0], dim=-1))
    with pytest.raises(ValueError, match="^this block's weights are not a function of its pairwise and unary logits$"):
        record.weights()


def test_a_capture_without_a_unary_term_has_no_unary_attention():
    q, k = torch.randn(1, 3, 2), torch.randn(1, 4, 2)
    record = CapturedAttention(q, k, None, torch.randn(1, 4, 2), torch.randn(1, 3, 2), (1, 3), (2, 2), None)
    assert record.unary_attention() is None
    torch.testing.assert_close(record.pairwise_attention(), torch.softmax(q @ k.transpose(1, 2), dim=-1))
