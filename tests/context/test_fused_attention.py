"""``fused_attention``: SDPA with one head, and its CPU N=1 path (queries split into two heads sharing k, v)."""

import pytest
import torch

from dnlseg.context import fused_attention


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
