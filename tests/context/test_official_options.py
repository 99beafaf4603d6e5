"""The options of the authors' code (docs/science.md section 6.2), each against its formula written out."""

import math

import pytest
import torch
from torch import nn

from dnlseg.context import DisentangledNonLocal2d, NonLocal2d, capture_attention
from dnlseg.context.logit_scale import LogitScale
from dnlseg.context.whitening import WHITENINGS, Whiten
from tests.context.reference import conv1x1, whiten


def randomise(block: nn.Module) -> nn.Module:
    """Every parameter random (gamma and the zero-initialised layers included), norms in eval mode."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.5)
    return block.double().eval()


@pytest.mark.parametrize("kind", WHITENINGS)
def test_whitening_matches_its_formula(kind):
    torch.manual_seed(0)
    module = Whiten(kind, 6).double().train()
    if module.norm is not None and module.norm.affine:
        nn.init.normal_(module.norm.weight), nn.init.normal_(module.norm.bias)
    t = torch.randn(3, 10, 6, dtype=torch.float64) * 2 + 1  # (N, P, C')
    expected = whiten(t.transpose(1, 2), kind, module.norm).transpose(1, 2)
    torch.testing.assert_close(module(t), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fixbug", [True, False])
def test_logit_scale_divides_by_sqrt_channels_only_with_fixbug(fixbug):
    scale = LogitScale(16, temperature=0.05, fixbug=fixbug)
    expected = 1 / (4 * 0.05) if fixbug else 4 / 0.05
    assert scale().item() == pytest.approx(expected)


def test_softplus_temperature_starts_at_tau_and_scales_by_softplus():
    scale = LogitScale(16, temperature=0.05, learn_temperature=True, temperature_form="softplus")
    assert scale().item() == pytest.approx(1 / (4 * 0.05))  # softplus(t0) = 1 / tau
    with torch.no_grad():
        scale.softplus_temperature.fill_(-1.0)
    assert scale().item() == pytest.approx(math.log1p(math.exp(-1.0)) / 4)
    with pytest.raises(ValueError, match="softplus.*learn_temperature"):
        LogitScale(16, temperature_form="softplus")


def official_dnl(block: DisentangledNonLocal2d, x, whitening="channel", unary="gc"):
    """The official block's forward (docs/science.md 6.2): x + out_bn(conv_out(gamma * y_pairwise + y_unary))."""
    N, C, H, W = x.shape
    xf = x.flatten(2)
    v = conv1x1(block.value, xf)  # (N, Cv, P)
    c = block.channels
    y = 0
    if block.has_pairwise:
        raw_q, raw_k = conv1x1(block.query, xf), conv1x1(block.key, xf)
        q, k = whiten(raw_q, whitening), whiten(raw_k, whitening)
        sim = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / math.sqrt(c) / block.temperature, dim=-1)
        y = block.gamma * torch.einsum("nij,ncj->nci", sim, v)  # only the pairwise part is scaled
    if unary == "gc":
        mask = torch.softmax(conv1x1(block.unary, xf), dim=-1)  # (N, 1, P)
    else:  # with_unary: softmax_j(mu_q . (k_j - mu_k)), no scale, no temperature
        mask = torch.softmax(torch.einsum("nc,ncj->nj", raw_q.mean(-1), raw_k - raw_k.mean(-1, keepdim=True)), -1)
        mask = mask[:, None]
    y = y + torch.einsum("nj,ncj->nc", mask[:, 0], v)[..., None]  # (N, Cv, 1) broadcast over positions
    y = y.reshape(N, -1, H, W)
    if block.out is not None:
        y = torch.einsum("oc,nchw->nohw", block.out.weight[:, :, 0, 0], y)  # conv_out, no bias
    return x + block.out_norm(y)


@pytest.mark.parametrize("use_out", [True, False])
def test_official_output_mode_is_the_official_block(use_out):
    block = randomise(DisentangledNonLocal2d(8, output="gamma", use_out=use_out))
    assert block.out is None or block.out.bias is None
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), official_dnl(block, x), rtol=1e-10, atol=1e-10)
    if not use_out:
        assert block.value.out_channels == 8  # the value keeps all C channels


def test_official_output_starts_with_gamma_zero_and_an_unscaled_norm():
    block = DisentangledNonLocal2d(8, output="gamma")
    assert block.gamma.item() == 0.0 and torch.equal(block.out_norm.weight, torch.ones(8))
    x = torch.randn(2, 8, 4, 5)
    block(x).square().sum().backward()
    assert block.gamma.grad.abs() > 0  # gamma learns from the first step
    assert "gamma" in {n for n, p in block.named_parameters()}
    assert any(p is block.gamma for p in block.branches()["out"])


@pytest.mark.parametrize("whitening", [w for w in WHITENINGS if not w.startswith("bn")] + [None])
def test_whitening_options_give_the_formula(whitening):
    block = randomise(DisentangledNonLocal2d(8, whitening=whitening, output="gamma"))
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), official_dnl(block, x, whitening=whitening), rtol=1e-10, atol=1e-10)


def test_shared_key_unary_without_scale_is_the_official_with_unary():
    block = randomise(DisentangledNonLocal2d(8, unary="shared_key", shared_key_scale="none", output="gamma"))
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), official_dnl(block, x, unary="shared_key"), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale", ["sqrt", "temperature"])
def test_shared_key_logits_are_scaled_by_sqrt_channels_or_with_the_temperature(scale):
    block = randomise(DisentangledNonLocal2d(8, unary="shared_key", shared_key_scale=scale))
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    xf = x.flatten(2)
    raw_q, raw_k = conv1x1(block.query, xf), conv1x1(block.key, xf)
    logits = torch.einsum("nc,ncj->nj", raw_q.mean(-1), raw_k)[:, None]  # mu_q . k_j, (N, 1, P)
    expected = logits / 2 if scale == "sqrt" else logits / (2 * block.temperature)  # sqrt(C') = 2
    with capture_attention(block) as captured:
        block(x)
    torch.testing.assert_close(captured[""][0].unary_logits, expected, rtol=1e-10, atol=1e-12)


def test_unfixed_scale_multiplies_the_logits_by_sqrt_channels():
    fixed, unfixed = (randomise(DisentangledNonLocal2d(8, fixbug=f, unary=None)) for f in (True, False))
    x = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    with capture_attention(fixed) as a, capture_attention(unfixed) as b:
        fixed(x), unfixed(x)
    ratio = b[""][0].pairwise_logits() / a[""][0].pairwise_logits()
    torch.testing.assert_close(ratio, torch.full_like(ratio, 4.0))  # sqrt(C') / (1 / sqrt(C')) = C' = 4


def test_non_local_with_global_context_adds_the_gc_transform_beside_the_non_local_branch():
    block = randomise(NonLocal2d(8, global_context=True))
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    plain = NonLocal2d(8).double().eval()
    plain.load_state_dict({k: v for k, v in block.state_dict().items() if not k.startswith("global_context.")})
    gc = block.global_context
    torch.testing.assert_close(block(x), plain(x) + gc(x) - x, rtol=1e-10, atol=1e-10)
    assert torch.equal(NonLocal2d(8, global_context=True)(x.float()), x.float())  # identity at init


def test_non_local_fork_options_give_the_formula():
    """bn-like whitening and the softplus temperature: softmax_j(white(q_i) . white(k_j) * softplus(t) / sqrt(C'))."""
    block = randomise(NonLocal2d(8, whitening="bn_like", learn_temperature=True, temperature_form="softplus"))
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    xf = x.flatten(2)
    q, k = whiten(conv1x1(block.query, xf), "bn_like"), whiten(conv1x1(block.key, xf), "bn_like")
    s = torch.nn.functional.softplus(block.logit_scale.softplus_temperature) / 2
    w = torch.softmax(torch.einsum("nci,ncj->nij", q, k) * s, dim=-1)
    y = torch.einsum("nij,ncj->nci", w, conv1x1(block.value, xf)).reshape(2, 4, 4, 5)
    torch.testing.assert_close(block(x), x + block.out_norm(block.out(y)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(output="official"), "output='official' is not one of"),
        (dict(whitening="layer"), "whitening='layer' is not one of"),
        (dict(shared_key_scale="half"), "shared_key_scale='half' is not one of"),
        (dict(temperature_form="softplus"), "set learn_temperature=true"),
    ],
)
def test_bad_official_options_raise_clear_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DisentangledNonLocal2d(8, **kwargs)
