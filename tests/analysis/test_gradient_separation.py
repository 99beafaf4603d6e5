"""The paper's add-vs-multiply claim in float64: a regression in the blocks breaks the build."""

import pytest
import torch

from dnlseg.analysis import cross_sensitivity, unary_logit_gradient
from dnlseg.context import CrissCrossAttention2d, DisentangledNonLocal2d, NonLocal2d, capture_attention

NL_COMBINE, DNL_COMBINE = NonLocal2d(8).combine, DisentangledNonLocal2d(8).combine


def random_logits(seed, n=2, p=30, pk=24):
    g = torch.Generator().manual_seed(seed)
    pairwise = torch.randn(n, p, pk, generator=g, dtype=torch.float64) * 2
    unary = torch.randn(n, 1, pk, generator=g, dtype=torch.float64) * 2
    upstream = torch.randn(n, p, pk, generator=g, dtype=torch.float64)
    return pairwise, unary, upstream


@pytest.mark.parametrize("seed", range(5))
def test_nl_unary_gradient_depends_on_pairwise_logits(seed):
    p, u, g = random_logits(seed)
    assert cross_sensitivity(NL_COMBINE, p, u, g, generator=torch.Generator().manual_seed(seed)) > 1e-3


@pytest.mark.parametrize("seed", range(5))
def test_dnl_unary_gradient_independent_of_pairwise(seed):
    p, u, g = random_logits(seed)
    assert cross_sensitivity(DNL_COMBINE, p, u, g, generator=torch.Generator().manual_seed(seed)) < 1e-10


def test_unary_logit_gradient_matches_the_closed_form_of_science_md():
    p, u, g = random_logits(7)
    # DNL: dL/dm_t = s_t sum_i (g_it - sum_j s_j g_ij), s = softmax(m)
    s = torch.softmax(u, dim=-1)
    expected = s * (g - (s * g).sum(-1, keepdim=True)).sum(1, keepdim=True)
    torch.testing.assert_close(unary_logit_gradient(DNL_COMBINE, p, u, g), expected)
    # NL: dL/du_t = sum_i w_it (g_it - sum_j w_ij g_ij), w = softmax(p + u)
    w = torch.softmax(p + u, dim=-1)
    expected = (w * (g - (w * g).sum(-1, keepdim=True))).sum(1, keepdim=True)
    torch.testing.assert_close(unary_logit_gradient(NL_COMBINE, p, u, g), expected)


def test_blocks_captured_logits_show_the_same_separation():
    """Through the real blocks' captured factors: NL coupled, DNL separated."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    for cls, coupled in ((NonLocal2d, True), (DisentangledNonLocal2d, False)):
        block = cls(8).double()
        with capture_attention(block) as captured:
            block(x)
        ((record,),) = captured.values()
        p = record.pairwise_logits()
        g = torch.randn_like(p)
        value = cross_sensitivity(record.combine, p, record.unary_logits, g)
        assert (value > 1e-3) if coupled else (value < 1e-10)


def test_cross_sensitivity_is_the_relative_change_of_a_known_unary_gradient():
    # combine(p, u) = p^2 u: g_u = sum_i G_ij p_ij^2, so with dp the seeded direction scaled to
    # ||dp|| = step ||p||, cross = ||sum_i G ((p + dp)^2 - p^2)|| / ||sum_i G p^2||. Small logits (norms < 1).
    p, u, g = (t * 0.05 for t in random_logits(3))
    direction = torch.randn(p.shape, generator=torch.Generator().manual_seed(11), dtype=p.dtype)
    for step in (1e-2, 0.3):
        dp = direction * (step * p.norm() / direction.norm())
        expected = (g * ((p + dp) ** 2 - p**2)).sum(1).norm() / (g * p**2).sum(1).norm()
        value = cross_sensitivity(lambda p, u, rows=None: p**2 * u, p, u, g, step, torch.Generator().manual_seed(11))
        torch.testing.assert_close(value, expected)
    default = cross_sensitivity(NL_COMBINE, p, u, g, generator=torch.Generator().manual_seed(1))
    explicit = cross_sensitivity(NL_COMBINE, p, u, g, 1e-2, torch.Generator().manual_seed(1))
    assert default == explicit  # relative_step defaults to 1 %


def criss_cross_record(seed=0, size=(5, 6)):
    """One captured criss-cross call (CCNet: each query attends to its row and column) in float64."""
    torch.manual_seed(seed)
    block = CrissCrossAttention2d(8, recurrence=1).double()
    with capture_attention(block) as captured:
        block(torch.randn(1, 8, *size, dtype=torch.float64))
    ((record,),) = captured.values()
    return record


def test_cross_sensitivity_of_some_query_rows_hands_the_rows_to_a_per_query_key_set():
    record = criss_cross_record()
    rows = torch.tensor([[0, 7, 29]])  # 3 of the 30 queries: combine must know whose row and column they have
    p, u = record.pairwise_logits(rows), record.unary_logits
    g = torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype)
    value = cross_sensitivity(record.combine, p, u, g, rows=rows, key_mask=record.key_mask(rows))
    assert value > 1e-3  # CC's softmax of p + u couples the terms, as NL's
    # the same rows taken out of the all-rows computation (rows=None: every query, in order)
    all_p = record.pairwise_logits()
    expected = unary_logit_gradient(record.combine, all_p, u, torch.zeros_like(all_p).index_copy(1, rows[0], g))
    torch.testing.assert_close(unary_logit_gradient(record.combine, p, u, g, rows), expected)


def test_cross_sensitivity_perturbs_and_measures_the_logits_of_each_querys_keys_only():
    # logits outside a query's row and column enter no softmax: whatever they are, the number is the same
    record = criss_cross_record(seed=3)
    rows = torch.tensor([[2, 11, 20, 24]])
    p, u, mask = record.pairwise_logits(rows), record.unary_logits, record.key_mask(rows)
    g = torch.randn(p.shape, generator=torch.Generator().manual_seed(4), dtype=p.dtype)

    def cross(pairwise):
        generator = torch.Generator().manual_seed(5)
        return cross_sensitivity(record.combine, pairwise, u, g, 0.05, generator, rows=rows, key_mask=mask)

    torch.testing.assert_close(cross(p.masked_fill(~mask, 40.0)), cross(p))


def test_the_perturbation_has_the_asked_relative_size_even_when_its_random_direction_is_short():
    """||dp|| = relative_step * ||p|| over each query's keys, also when the direction is one number below 1."""

    def coupled(p, u, rows=None):  # NL's softmax of p + u: dL/du depends on p
        return torch.softmax(p + u, dim=-1)

    p = torch.tensor([[[2.0, -1.0, 0.5]]], dtype=torch.float64)
    u = torch.tensor([[[0.3, 0.0, -0.2]]], dtype=torch.float64)
    upstream = torch.tensor([[[1.0, -2.0, 0.5]]], dtype=torch.float64)
    mask = torch.tensor([[[True, False, False]]])  # one key: the direction is a single standard-normal number
    seed = next(
        s for s in range(100) if 0.05 < abs(torch.randn(3, generator=torch.Generator().manual_seed(s))[0]) < 0.5
    )
    direction = torch.randn((1, 1, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    step = torch.zeros_like(p)
    step[0, 0, 0] = torch.sign(direction[0, 0, 0]) * 0.1 * 2.0  # relative_step * ||p over the key||
    before = unary_logit_gradient(coupled, p, u, upstream)
    expected = (unary_logit_gradient(coupled, p + step, u, upstream) - before).norm() / before.norm()
    got = cross_sensitivity(
        coupled, p, u, upstream, relative_step=0.1, generator=torch.Generator().manual_seed(seed), key_mask=mask
    )
    torch.testing.assert_close(got, expected)
