"""NonLocal2d computes docs/science.md section 1 exactly, and hands out the decomposition of section 2."""

import math

import pytest
import torch
import torch.nn.functional as F

from dnlseg.context import NonLocal2d, capture_attention
from tests.context.reference import conv1x1
from tests.helpers import TensorSizes


def reference_non_local(block: NonLocal2d, x):
    """A straightforward formula implementation of the embedded-Gaussian / dot-product / Gaussian NL block."""
    N, C, H, W = x.shape
    xf = x.flatten(2)  # (N, C, P)
    v = conv1x1(block.value, xf)
    if block.mode == "gaussian":
        q = k = xf
        w = torch.softmax(torch.einsum("nci,ncj->nij", q, k) / math.sqrt(C), dim=-1)
    else:
        q, k = conv1x1(block.query, xf), conv1x1(block.key, xf)
        logits = torch.einsum("nci,ncj->nij", q, k)
        if block.mode == "dot_product":
            w = logits / (H * W)
        else:
            w = torch.softmax(logits / math.sqrt(q.shape[1]), dim=-1)
    y = torch.einsum("nij,ncj->nci", w, v).reshape(N, -1, H, W)
    return x + block.out_norm(block.out(y))


@pytest.mark.parametrize("mode", ["embedded_gaussian", "dot_product", "gaussian"])
@pytest.mark.parametrize("attention", ["fused", "materialized"])
def test_non_local_matches_formula(mode, attention):
    torch.manual_seed(0)
    block = NonLocal2d(6, reduction=2, mode=mode, attention=attention).double().eval()
    torch.nn.init.normal_(block.out_norm.weight)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(block(x), reference_non_local(block, x), rtol=1e-10, atol=1e-10)


def test_softmax_of_query_key_equals_softmax_of_pairwise_plus_unary_in_float64():
    torch.manual_seed(0)
    q = torch.randn(3, 20, 4, dtype=torch.float64) * 3 + 1
    k = torch.randn(3, 15, 4, dtype=torch.float64) * 3 - 2
    v = torch.randn(3, 15, 2, dtype=torch.float64)
    block = NonLocal2d(8).double()
    s = block.logit_scale()  # 1 / sqrt(C'), the scale forward folds into q
    assert s.item() == pytest.approx(0.5)
    record = block.decompose(q * s, k, v, None, (4, 5), (3, 5))
    direct = torch.softmax(q @ k.transpose(1, 2) * s, dim=-1)
    torch.testing.assert_close(record.weights(), direct, rtol=1e-12, atol=1e-14)
    p = record.pairwise_logits()
    # p is the whitened logit (q_i - mu_q).(k_j - mu_k) s; it sums to zero over queries for every key.
    expected_p = (q - q.mean(1, keepdim=True)) @ (k - k.mean(1, keepdim=True)).transpose(1, 2) * s
    torch.testing.assert_close(p, expected_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p.sum(dim=1), torch.zeros(3, 15, dtype=torch.float64), atol=1e-10, rtol=0)
    # u_j = mu_q . k_j s, one row shared by every query.
    torch.testing.assert_close(record.unary_logits, q.mean(1, keepdim=True) @ k.transpose(1, 2) * s)


def test_captured_output_gives_the_attention_weight_gradient_of_a_materialised_reference():
    """dL/dw_ij = dL/dy_i . v_j from the captured y and v equals autograd through an explicit (P, Pk) matrix."""
    torch.manual_seed(0)
    block = NonLocal2d(8, attention="fused").double()
    torch.nn.init.normal_(block.out_norm.weight)
    x = torch.randn(2, 8, 3, 4, dtype=torch.float64)
    with capture_attention(block) as captured:
        out = block(x)
    (record,) = captured[""]
    assert record.query_size == (3, 4) and record.key_size == (3, 4)
    (grad_y,) = torch.autograd.grad(out.square().sum(), record.output)
    grad_w = grad_y @ record.values.transpose(1, 2)  # (N, P, C') @ (N, C', Pk) -> (N, P, Pk)

    q, k, v = (t.detach() for t in block.embed(x, x))
    w = torch.softmax(q @ k.transpose(1, 2) * block.logit_scale(), dim=-1).requires_grad_(True)
    reference = block.residual(x, w @ v)
    (expected,) = torch.autograd.grad(reference.square().sum(), w)
    torch.testing.assert_close(grad_w, expected, rtol=1e-10, atol=1e-12)


def test_dot_product_factors_are_the_decomposition_and_have_no_combine():
    block = NonLocal2d(8, mode="dot_product").double()
    x = torch.randn(1, 8, 3, 4, dtype=torch.float64)
    with capture_attention(block) as captured:
        block(x)
    (record,) = captured[""]
    assert record.combine is None
    with pytest.raises(ValueError, match="not a function of its pairwise and unary logits"):
        record.weights()
    q, k, _ = block.embed(x, x)
    # q.k s = p + u + (terms constant in j): the decomposition still holds
    diff = q @ k.transpose(1, 2) - record.pairwise_logits() - record.unary_logits  # no softmax, no scale
    torch.testing.assert_close(diff - diff[..., :1], torch.zeros_like(diff), atol=1e-12, rtol=0)


def test_captured_factors_are_the_decomposition_of_the_real_block_and_carry_its_gradients():
    block = NonLocal2d(8, attention="fused")
    torch.nn.init.ones_(block.out_norm.weight)
    x = torch.randn(2, 8, 3, 4)
    with capture_attention(block) as captured:
        out = block(x)
    (record,) = captured[""]
    # docs/science.md section 2's decomposition of the embedded-Gaussian logits q_i.k_j / sqrt(C'):
    q, k = (conv(x).flatten(2).transpose(1, 2) for conv in (block.query, block.key))  # (N, P, C')
    scale = q.shape[-1] ** -0.5
    mu_q, mu_k = q.mean(1, keepdim=True), k.mean(1, keepdim=True)
    torch.testing.assert_close(record.pairwise_logits(), (q - mu_q) @ (k - mu_k).transpose(1, 2) * scale)
    torch.testing.assert_close(record.unary_logits, mu_q @ k.transpose(1, 2) * scale)
    w = torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1)
    torch.testing.assert_close(record.weights(), w)
    # ... and in the graph: with g = dL/dw = dL/dy v^T, dL/dp and dL/du follow through w = softmax_j(p_ij + u_j).
    (grad_y,) = torch.autograd.grad(out.square().sum(), record.output)
    g = grad_y @ record.values.transpose(1, 2)  # (N, P, C') @ (N, C', Pk) -> (N, P, Pk)
    p, u = record.pairwise_logits().detach().requires_grad_(), record.unary_logits.detach().requires_grad_()
    grad_p, grad_u = torch.autograd.grad(record.combine(p, u), [p, u], g)
    expected_p = w * (g - (w * g).sum(-1, keepdim=True))
    torch.testing.assert_close(grad_p, expected_p)
    torch.testing.assert_close(grad_u, expected_p.sum(1, keepdim=True))
    assert grad_p.abs().sum() > 0


def test_downsample_pools_keys_to_a_quarter():
    block = NonLocal2d(8, downsample=True, attention="materialized")
    with capture_attention(block) as captured:
        block(torch.randn(1, 8, 7, 9))
    (record,) = captured[""]
    assert record.key_size == (4, 5)
    assert record.weights().shape == (1, 63, 20)


def test_fused_path_never_builds_the_position_by_position_matrix():
    """Fused peak memory stays far below one (P, P) fp32 matrix (P = 4096: 64 MiB)."""
    block = NonLocal2d(16).eval()
    x = torch.randn(1, 16, 64, 64)
    with torch.no_grad(), TensorSizes() as sizes:
        block(x)
    assert max(sizes) < 4096 * 4096 / 16
    block.attention = "materialized"
    with torch.no_grad(), TensorSizes() as sizes:
        block(x)
    assert max(sizes) >= 4096 * 4096


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_channels=10, reduction=3), "not divisible by reduction"),
        (dict(in_channels=8, mode="cosine"), "mode='cosine' is not one of"),
        (dict(in_channels=8, attention="flash"), "attention='flash' is not one of"),
    ],
)
def test_bad_arguments_raise_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NonLocal2d(**kwargs)


def test_scaled_dot_product_attention_is_what_fused_calls():
    """The fused path is the SDPA call, so the flash/memory-efficient kernels apply on GPU."""
    block = NonLocal2d(8).eval()
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        block(torch.randn(2, 8, 3, 5))
    finally:
        F.scaled_dot_product_attention = original
    assert calls == [torch.Size([2, 1, 15, 4])]


def test_gaussian_mode_has_no_query_or_key_embedding():
    block = NonLocal2d(8, mode="gaussian")
    assert block.query is None and block.key is None
    assert {n.split(".")[0] for n, _ in block.named_parameters()} == {"value", "out", "out_norm"}


@pytest.mark.parametrize(
    "options",
    [dict(whitening="channel"), dict(temperature=0.5), dict(learn_temperature=True)],
    ids=["whitening", "temperature", "learned temperature"],
)
def test_dot_product_mode_refuses_each_softmax_option_on_its_own(options):
    message = "^mode='dot_product' has no softmax: whitening and temperature apply to the other modes$"
    with pytest.raises(ValueError, match=message):
        NonLocal2d(8, mode="dot_product", **options)
    NonLocal2d(8, mode="embedded_gaussian", **options)  # the softmax modes take it


def test_non_local_without_out_conv_keeps_the_value_at_full_width():
    block = NonLocal2d(8, use_out=False)
    assert block.out is None and block.value.out_channels == 8 and block.query.out_channels == 4


def test_unfixed_scale_multiplies_the_logits_by_sqrt_of_the_key_channels():
    torch.testing.assert_close(NonLocal2d(8, fixbug=False).logit_scale(), torch.tensor(math.sqrt(4.0)))
    torch.testing.assert_close(NonLocal2d(8).logit_scale(), torch.tensor(1 / math.sqrt(4.0)))


@pytest.mark.parametrize("whitening", ["bn", "bn_affine"])
def test_batchnorm_whitening_normalises_the_key_channels_of_query_and_key(whitening):
    block = NonLocal2d(8, whitening=whitening)
    assert block.query_whiten.norm.num_features == 4 and block.key_whiten.norm.num_features == 4
    assert block(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)
