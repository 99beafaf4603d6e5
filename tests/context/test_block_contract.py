"""The contract every context block keeps, run for every variant."""

import pytest
import torch
from torch import nn

from tests.context.variants import VARIANTS

C = 8


def make(name: str, attention: str = "fused", dtype=torch.float32) -> nn.Module:
    torch.manual_seed(0)
    block = VARIANTS[name](C, attention=attention).to(dtype)
    return block


def randomise_output(block: nn.Module) -> None:
    """Undo the zero init of the output norm (or conv) so gradients reach every branch."""
    target = block.out_norm if isinstance(block.out_norm, (nn.BatchNorm2d, nn.GroupNorm)) else block.out
    with torch.no_grad():
        target.weight.normal_(0, 1.0)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (1, 9), (3, 1)])
def test_block_keeps_shape_for_odd_and_non_square_inputs(name, size):
    x = torch.randn(2, C, *size)
    for attention in ("fused", "materialized"):
        assert make(name, attention)(x).shape == x.shape


@pytest.mark.parametrize("name", VARIANTS)
def test_block_is_identity_at_init(name):
    x = torch.randn(2, C, 5, 6)
    for attention in ("fused", "materialized"):
        block = make(name, attention)
        torch.testing.assert_close(block.train()(x), x, rtol=0, atol=0)
        torch.testing.assert_close(block.eval()(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("name", VARIANTS)
def test_fused_equals_materialized_outputs_and_gradients(name):
    torch.manual_seed(1)
    x = torch.randn(2, C, 5, 7)
    results = []
    for attention in ("fused", "materialized"):
        # eval: train-mode BN after ``out`` cancels the value bias, leaving its gradient as rounding noise.
        block = make(name, attention).eval()
        randomise_output(block)
        xi = x.clone().requires_grad_(True)
        out = block(xi)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}
        results.append((out.detach(), xi.grad.clone(), grads))
    (out_f, gx_f, gp_f), (out_m, gx_m, gp_m) = results
    torch.testing.assert_close(out_f, out_m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_f, gx_m, rtol=1e-5, atol=1e-5)
    assert gp_f.keys() == gp_m.keys()
    assert any(g.abs().sum() > 0 for g in gp_f.values())
    for key in gp_f:  # 1e-5 relative to the largest gradient entry (tau = 0.05 makes them ~100 here)
        atol = 1e-5 * max(1.0, gp_m[key].abs().max().item())
        torch.testing.assert_close(gp_f[key], gp_m[key], rtol=1e-5, atol=atol, msg=key)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("attention", ["fused", "materialized"])
def test_block_passes_float64_gradcheck(name, attention):
    block = make(name, attention, torch.float64).eval()
    randomise_output(block)
    x = torch.randn(1, C, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_backward_raises_no_autograd_error_under_anomaly_detection(name):
    for attention in ("fused", "materialized"):
        block = make(name, attention)
        randomise_output(block)
        x = torch.randn(2, C, 4, 5, requires_grad=True)
        with torch.autograd.set_detect_anomaly(True):
            block(x).square().sum().backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", VARIANTS)
def test_bf16_autocast_is_finite_and_close_to_fp32(name):
    torch.manual_seed(2)
    x = torch.randn(2, C, 6, 6)
    for attention in ("fused", "materialized"):
        block = make(name, attention).eval()
        randomise_output(block)
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
        assert torch.isfinite(low).all()
        torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)
