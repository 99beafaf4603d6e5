"""NonLocal2d computes SCIENCE.md section 1 exactly, and hands out the decomposition of section 2."""

import math

import pytest
import torch
import torch.nn.functional as F

from dnlseg.context import NonLocal2d


def conv1x1(conv, x):
    """The 1x1 conv written as a matrix product: (N, C, P) -> (N, C_out, P)."""
    return torch.einsum("oc,ncp->nop", conv.weight[:, :, 0, 0], x) + conv.bias[None, :, None]


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
    block = NonLocal2d(8).double()
    maps = block.attention_maps(q, k, (4, 5), (3, 5))
    direct = torch.softmax(q @ k.transpose(1, 2) * block.scale, dim=-1)
    torch.testing.assert_close(
        NonLocal2d.combine(maps.pairwise_logits, maps.unary_logits), direct, rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(maps.weights, direct, rtol=1e-12, atol=1e-14)
    # p is whitened: it sums to zero over queries for every key, and u does not depend on the query.
    torch.testing.assert_close(
        maps.pairwise_logits.sum(dim=1), torch.zeros(3, 15, dtype=torch.float64), atol=1e-10, rtol=0
    )
    assert maps.unary_logits.shape == (3, 1, 15)


def test_keep_attention_records_maps_in_the_graph():
    block = NonLocal2d(8, attention="fused")
    torch.nn.init.ones_(block.out_norm.weight)
    block.keep_attention = True
    x = torch.randn(2, 8, 3, 4)
    out = block(x)
    maps = block.last_attention
    assert maps.weights.shape == (2, 12, 12) and maps.query_size == (3, 4) and maps.key_size == (3, 4)
    # The maps are SCIENCE.md section 2's decomposition of the embedded-Gaussian logits q_i.k_j / sqrt(C'):
    q, k = (conv(x).flatten(2).transpose(1, 2) for conv in (block.query, block.key))  # (N, P, C')
    scale = q.shape[-1] ** -0.5
    mu_q, mu_k = q.mean(1, keepdim=True), k.mean(1, keepdim=True)
    torch.testing.assert_close(maps.pairwise_logits, (q - mu_q) @ (k - mu_k).transpose(1, 2) * scale)
    torch.testing.assert_close(maps.unary_logits, mu_q @ k.transpose(1, 2) * scale)
    torch.testing.assert_close(maps.weights, torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1))
    # ... and in the graph: dL/dp and dL/du follow from g = dL/dw through w = softmax_j(p_ij + u_j).
    loss = out.square().sum()
    grad_w, grad_p, grad_u = torch.autograd.grad(loss, [maps.weights, maps.pairwise_logits, maps.unary_logits])
    w = maps.weights
    expected_p = w * (grad_w - (w * grad_w).sum(-1, keepdim=True))
    torch.testing.assert_close(grad_p, expected_p)
    torch.testing.assert_close(grad_u, expected_p.sum(1, keepdim=True))
    assert grad_p.abs().sum() > 0


def test_downsample_pools_keys_to_a_quarter():
    block = NonLocal2d(8, downsample=True, attention="materialized")
    block.keep_attention = True
    block(torch.randn(1, 8, 7, 9))
    assert block.last_attention.key_size == (4, 5)
    assert block.last_attention.weights.shape == (1, 63, 20)


def test_fused_path_never_builds_the_position_by_position_matrix():
    """Fused peak memory stays far below one (P, P) fp32 matrix (P = 4096: 64 MiB)."""
    block = NonLocal2d(16).eval()
    x = torch.randn(1, 16, 64, 64)
    seen = []

    def watch(func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                seen.append(t.numel())
        return out

    from torch.overrides import TorchFunctionMode

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return watch(func, types, args, kwargs)

    with torch.no_grad(), Watch():
        block(x)
    assert max(seen) < 4096 * 4096 / 16
    block.attention = "materialized"
    seen.clear()
    with torch.no_grad(), Watch():
        block(x)
    assert max(seen) >= 4096 * 4096


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
