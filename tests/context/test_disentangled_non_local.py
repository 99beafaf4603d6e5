"""DisentangledNonLocal2d computes docs/science.md section 2 exactly, with each ablation of section 3."""

import math

import pytest
import torch

from dnlseg.context import DisentangledNonLocal2d, capture_attention
from tests.context.reference import conv1x1, whiten


def reference_dnl(block: DisentangledNonLocal2d, x):
    """Formula implementation: w_ij = softmax_j(p_ij / (sqrt(C') tau)) + softmax_j(m_j)."""
    N, C, H, W = x.shape
    xf = x.flatten(2)
    v = conv1x1(block.value, xf)  # (N, C', P)
    c = v.shape[1]
    w = 0
    if block.has_pairwise:
        q, k = conv1x1(block.query, xf), conv1x1(block.key, xf)
        qw, kw = q - q.mean(-1, keepdim=True), k - k.mean(-1, keepdim=True)
        p = torch.einsum("nci,ncj->nij", qw, kw) / (math.sqrt(c) * block.temperature)
        w = w + torch.softmax(p, dim=-1)
    if block.unary_source == "conv":
        m = conv1x1(block.unary, xf)  # (N, 1, P)
        w = w + torch.softmax(m, dim=-1)
    elif block.unary_source == "shared_key":
        m = torch.einsum("nc,ncj->nj", q.mean(-1), k)[:, None] / math.sqrt(c)
        w = w + torch.softmax(m, dim=-1)
    y = torch.einsum("nij,ncj->nci", w.expand(N, H * W, H * W), v).reshape(N, c, H, W)
    return x + block.out_norm(block.out(y))


@pytest.mark.parametrize(
    "variant",
    [dict(), dict(unary="shared_key"), dict(unary=None), dict(pairwise=False), dict(temperature=1.0)],
    ids=["dnl", "shared_key", "pairwise_nl", "unary_nl", "tau1"],
)
@pytest.mark.parametrize("attention", ["fused", "materialized"])
def test_dnl_matches_formula(variant, attention):
    torch.manual_seed(0)
    block = DisentangledNonLocal2d(6, reduction=2, attention=attention, **variant).double().eval()
    torch.nn.init.normal_(block.out_norm.weight)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference_dnl(block, x), rtol=1e-10, atol=1e-10)


def test_dnl_weights_are_the_sum_of_two_softmaxes():
    block = DisentangledNonLocal2d(8, attention="materialized")
    with capture_attention(block) as captured:
        block(torch.randn(2, 8, 3, 4))
    ((record,),) = captured.values()
    weights = record.weights()
    # Each softmax sums to one over keys, so each row of w sums to two.
    torch.testing.assert_close(weights.sum(-1), torch.full((2, 12), 2.0))
    torch.testing.assert_close(
        weights, torch.softmax(record.pairwise_logits(), -1) + torch.softmax(record.unary_logits, -1)
    )


def test_learned_temperature_is_a_parameter_that_receives_gradient():
    block = DisentangledNonLocal2d(8, learn_temperature=True, temperature=0.5)
    torch.nn.init.ones_(block.out_norm.weight)
    assert "logit_scale.log_temperature" in dict(block.named_parameters())
    block(torch.randn(2, 8, 4, 4)).square().sum().backward()
    assert block.logit_scale.log_temperature.grad.abs() > 0
    torch.testing.assert_close(block.temperature, torch.tensor(0.5))
    fixed = DisentangledNonLocal2d(8)
    assert not any("temperature" in name for name, _ in fixed.named_parameters())
    assert not any("temperature" in name for name in fixed.state_dict())  # configuration, not state


def test_branches_are_named_as_in_the_paper():
    names = {n.split(".")[0] for n, _ in DisentangledNonLocal2d(8).named_parameters()}
    assert names == {"query", "key", "value", "unary", "out", "out_norm"}
    assert DisentangledNonLocal2d(8, pairwise=False).query is None
    assert DisentangledNonLocal2d(8, pairwise=False).key is None
    assert DisentangledNonLocal2d(8, unary="shared_key").unary is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_channels=10, reduction=4), "not divisible by reduction"),
        (dict(in_channels=8, temperature=0.0), "temperature=0.0 must be > 0"),
        (dict(in_channels=8, temperature=-1.0), "must be > 0"),
        (dict(in_channels=8, unary="gc"), "unary='gc' is not one of 'conv', 'shared_key'"),
        (
            dict(in_channels=8, pairwise=False, unary=None),
            "^pairwise=False with unary=None leaves no attention term: enable one of them$",
        ),
        (
            dict(in_channels=8, pairwise=False, unary="shared_key"),
            "^unary='shared_key' needs the pairwise query/key: use unary='conv' with pairwise=False$",
        ),
    ],
)
def test_bad_arguments_raise_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DisentangledNonLocal2d(**kwargs)


def test_captured_attention_records_the_query_and_key_grids():
    block = DisentangledNonLocal2d(8, downsample=True)
    with capture_attention(block) as captured:
        block(torch.randn(1, 8, 5, 7))
    (m,) = captured[""]
    assert (m.query_size, m.key_size) == ((5, 7), (3, 4))  # keys 2x2 max-pooled, ceil mode
    assert m.weights().shape == m.pairwise_logits().shape == (1, 35, 12) and m.unary_logits.shape == (1, 1, 12)


@pytest.mark.parametrize("kind", ["spatial", "ln_nostd"])
def test_the_captured_key_is_whitened_like_the_query(kind):
    # channel whitening of the key alone would not show (softmax_j drops q . mean(k)); these kinds change k_j
    torch.manual_seed(0)
    block = DisentangledNonLocal2d(8, whitening=kind).double()
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    with capture_attention(block) as captured:
        block(x)
    (record,) = captured[""]
    xf = x.flatten(2)  # (N, C, P)
    expected_key = whiten(conv1x1(block.key, xf), kind).transpose(1, 2)  # (N, P, C')
    expected_query = whiten(conv1x1(block.query, xf), kind).transpose(1, 2) * block.logit_scale()
    torch.testing.assert_close(record.pairwise_key, expected_key)
    torch.testing.assert_close(record.pairwise_query, expected_query)


def test_default_temperature_is_mmsegs_0_05():
    assert DisentangledNonLocal2d(8).temperature.item() == pytest.approx(0.05)
