"""``fused_attention``: SDPA with one head, and its CPU N=1 path (queries split into two heads sharing k, v)."""

import pytest
import torch
import torch.nn.functional as F

from dnlseg.context import attention, fused_attention
from dnlseg.context.attention import tokens


@pytest.mark.parametrize("positions", [63, 64])  # odd P: one zero query row is padded and dropped
def test_fused_attention_at_batch_one_equals_softmax_attention_and_its_gradients(positions):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, n, 8, dtype=torch.float64, requires_grad=True) for n in (positions, 40, 40))
    grad_out = torch.randn(1, positions, 8, dtype=torch.float64)
    y = fused_attention(q, k, v, scale=0.3)
    expected = torch.softmax(q @ k.transpose(1, 2) * 0.3, dim=-1) @ v  # (1, P, 8) @ (1, 8, Pk) ... -> (1, P, 8)
    torch.testing.assert_close(y, expected)
    grads = torch.autograd.grad(y, (q, k, v), grad_out)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad_out)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_fused_attention_batch_one_matches_the_same_image_in_a_batch():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 50, 16) for _ in range(3))
    torch.testing.assert_close(fused_attention(q[:1], k[:1], v[:1], 0.25), fused_attention(q, k, v, 0.25)[:1])


@pytest.mark.parametrize(
    ("batch", "positions", "query_heads"),
    [(1, 64, (1, 2, 32, 8)), (1, 63, (1, 2, 32, 8)), (2, 64, (2, 1, 64, 8))],
)
def test_on_cpu_one_image_is_split_into_two_query_heads_and_a_batch_is_not(monkeypatch, batch, positions, query_heads):
    """The CPU speed rule of ``fused_attention``: N = 1 -> two heads of ceil(P / 2) queries sharing k and v (whose
    heads are expanded views), N > 1 -> the plain one-head call."""
    calls = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append((tuple(q.shape), tuple(k.shape), tuple(v.shape), k.stride(1), kwargs))
        return original(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    q, k, v = torch.randn(batch, positions, 8), torch.randn(batch, 40, 8), torch.randn(batch, 40, 8)
    assert fused_attention(q, k, v, scale=0.3).shape == (batch, positions, 8)
    heads = query_heads[1]
    ((q_shape, k_shape, v_shape, k_head_stride, kwargs),) = calls
    assert (q_shape, k_shape, v_shape) == (query_heads, (batch, heads, 40, 8), (batch, heads, 40, 8))
    assert kwargs == {"scale": 0.3}
    if heads == 2:
        assert k_head_stride == 0  # the two heads share one k (expand, no copy)


def test_on_cpu_values_wider_than_the_keys_take_the_row_blocked_kernel_not_sdpas_map(monkeypatch):
    """PyTorch's CPU flash kernel needs Cv == Cq and its fallback builds the (P, Pk) map: DANet's PAM (Cv = 8 Cq)
    goes through ``RowBlockedAttention``, in blocks of rows and of keys, with SDPA's result and gradients."""
    torch.manual_seed(3)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 7 * 18)  # blocks of 7 rows (forward) and 7 keys (backward)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: pytest.fail("SDPA was called"))
    q, k, v = (torch.randn(2, 18, c, dtype=torch.float64, requires_grad=True) for c in (3, 3, 7))
    out = fused_attention(q, k, v, scale=0.3)
    expected = torch.softmax(q @ k.transpose(1, 2) * 0.3, dim=-1) @ v  # (2, 18, 7)
    torch.testing.assert_close(out, expected)
    assert torch.autograd.gradcheck(lambda *t: fused_attention(*t, scale=0.3), (q, k, v))


@pytest.mark.parametrize("keys", [23, 17])  # Pk = P (PAM) and Pk != P
def test_row_blocked_backward_equals_autograd_of_the_materialised_attention_in_float64(monkeypatch, keys):
    """``RowBlockedAttention``'s own backward (recomputed attention, per-row log-sum-exp, -delta and -lse carried as
    an extra channel) against autograd through softmax(q k^T * scale) v: uneven blocks of rows and keys (7, 7, 7, 2),
    two images, peaked softmaxes (logits up to ~50, so a log-sum-exp off by anything shows), Pk = P and Pk != P."""
    torch.manual_seed(4)
    monkeypatch.setattr(attention, "BLOCK_ELEMENTS", 7 * 23)  # 7 rows (forward) and 7 keys (backward) per block
    q = (torch.randn(2, 23, 3, dtype=torch.float64) * 6).requires_grad_(True)
    k = (torch.randn(2, keys, 3, dtype=torch.float64) * 2).requires_grad_(True)
    v = torch.randn(2, keys, 5, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 23, 5, dtype=torch.float64)
    out = attention.RowBlockedAttention.apply(q, k, v, 0.7)
    expected = reference_attention(q, k, v, scale=0.7)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    for got, want in zip(grads, torch.autograd.grad(expected, (q, k, v), grad_out), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    tiny = tuple(t[:, :5].detach().requires_grad_(True) for t in (q, k, v))  # P = Pk = 5: blocks of 7 and 16 rows
    assert torch.autograd.gradcheck(lambda *t: attention.RowBlockedAttention.apply(*t, 0.7), tiny)


def test_row_blocked_kernel_reads_channels_first_views_in_place_and_answers_in_their_layout():
    """PAM hands q, k, v over as (N, P, C) views of its convs' (N, C, P) maps: the same numbers as from contiguous
    tokens, and the output and the gradients come back channels-first (so ``y.transpose(1, 2)`` is a free view)."""
    torch.manual_seed(5)
    maps = [torch.randn(2, c, 30, dtype=torch.float64, requires_grad=True) for c in (4, 4, 12)]  # (N, C, P)
    views = [m.transpose(1, 2) for m in maps]  # (N, P, C), strides (C P, 1, P)
    out = fused_attention(*views, scale=0.4)
    assert out.transpose(1, 2).is_contiguous()
    expected = reference_attention(*(m.detach().transpose(1, 2).contiguous() for m in maps), scale=0.4)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out, views, torch.randn_like(out))  # what the kernel's backward returned
    assert all(g.transpose(1, 2).is_contiguous() for g in grads)
    with torch.no_grad():
        inference = fused_attention(*(m.transpose(1, 2) for m in maps), scale=0.4)
    assert inference.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(inference, expected, rtol=1e-12, atol=1e-12)


def test_inference_with_values_wider_than_the_keys_keeps_no_log_sum_exp(monkeypatch):
    """Without gradients the row-blocked forward runs alone (no autograd Function, nothing kept for a backward),
    with the same result."""
    monkeypatch.setattr(
        attention.RowBlockedAttention, "forward", lambda *a: pytest.fail("the training kernel ran in inference")
    )
    q, k, v = torch.randn(2, 40, 4), torch.randn(2, 40, 4), torch.randn(2, 40, 12)
    with torch.no_grad():
        out = fused_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out, reference_attention(q, k, v))
    out = fused_attention(q, k, v, scale=0.3)  # no input needs a gradient: the same
    torch.testing.assert_close(out, reference_attention(q, k, v))


def test_tokens_are_positions_by_channels_in_raster_order_and_contiguous():
    x = torch.arange(2 * 3 * 2 * 4).reshape(2, 3, 2, 4)  # (N, C, H, W)
    t = tokens(x)
    assert t.shape == (2, 8, 3) and t.is_contiguous()  # the layout SDPA's fused kernels need
    assert t[1, 5].tolist() == x[1, :, 1, 1].tolist()  # position 5 = row 1, column 1 of a 4-wide grid


class Attend(torch.nn.Module):
    def forward(self, q, k, v):
        return fused_attention(q, k, v, scale=0.3)


def reference_attention(q, k, v, scale=0.3):
    return torch.softmax(q @ k.transpose(1, 2) * scale, dim=-1) @ v  # (N, P, Pk) @ (N, Pk, C') -> (N, P, C')


def test_under_torch_export_the_attention_is_one_dnlseg_attention_node():
    """What an exporter lowers (``dnlseg.deploy.onnx_attention``): one node, not SDPA's decomposition; run in
    PyTorch the exported program still computes softmax attention."""
    q, k, v = torch.randn(2, 50, 8), torch.randn(2, 40, 8), torch.randn(2, 40, 4)
    program = torch.export.export(Attend(), (q, k, v))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets == ["dnlseg.attention.default"]
    q, k, v = torch.randn(2, 50, 8), torch.randn(2, 40, 8), torch.randn(2, 40, 4)  # the program's (static) shapes
    torch.testing.assert_close(program.module()(q, k, v), reference_attention(q, k, v))


def test_a_call_traced_at_batch_one_holds_at_other_sizes_and_batches():
    """What the TorchScript export relies on: ``torch.jit.trace`` records the CPU N = 1 split's size arithmetic
    (ceil(P / 2), the padding) as operations on the input's sizes, not as the example's numbers."""
    traced = torch.jit.trace(Attend(), (torch.randn(1, 64, 8), torch.randn(1, 64, 8), torch.randn(1, 64, 4)))
    for n, p in ((1, 63), (3, 20)):
        q, k, v = torch.randn(n, p, 8), torch.randn(n, 30, 8), torch.randn(n, 30, 4)
        torch.testing.assert_close(traced(q, k, v), reference_attention(q, k, v))
