"""Every block of ``dnlseg.context.BLOCKS`` computes what mmsegmentation 1.2.2's own module computes: the same
weights (mmseg's state dict renamed by the block's ``mmseg_names``, every weight, BatchNorm statistic, gamma and
zero-initialised layer random) give the same outputs, buffers and float64 gradients. CCNet's oracle is mmcv 2.1.0's
own ``cc_attention.py`` (the ``criss_cross_oracle`` fixture)."""

import pytest
import torch

from dnlseg.context import BLOCKS, from_mmseg

C = 32  # PAM and CC: C' = 4; ANN: 16; AFNB: low 16, C' 4
SIZES = [(13, 11), (16, 8)]  # not whole 8 x 8 ISA tiles (padded on both sides), then whole ones


def pair(name: str, dtype=torch.float32):
    """(mmseg's module, ours) with the same random weights."""
    from mmseg_reference import block_module, randomize_block

    reference = randomize_block(block_module(name, C), seed=1)
    ours = BLOCKS[name].build(C)
    state = from_mmseg(ours, reference.state_dict())
    assert state.keys() == ours.state_dict().keys()  # every weight and buffer of ours has its mmseg source
    ours.load_state_dict(state)
    return reference.to(dtype), ours.to(dtype)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(autouse=True)
def cc_oracle(criss_cross_oracle):
    return criss_cross_oracle


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", BLOCKS)
def test_block_output_and_buffers_equal_mmseg_modules(name, mode):
    reference, ours = pair(name)
    generator = torch.Generator().manual_seed(2)
    for size in SIZES:
        args = BLOCKS[name].example_inputs(2, C, size, classes=5, generator=generator)
        reference.train(mode == "train"), ours.train(mode == "train")
        with torch.no_grad():
            expected, got = reference(*args), ours(*args)
        assert relative(got, expected) <= 1e-5, (size, relative(got, expected))
        # BN statistics; EMA's bases, moved in training
        buffers = from_mmseg(ours, dict(reference.named_buffers(remove_duplicate=False)))
        for key, buffer in dict(ours.named_buffers()).items():
            if key.endswith("num_batches_tracked"):  # a counter: equal (APNB's shared projection counts twice)
                assert torch.equal(buffer, buffers[key]), key
            else:
                assert relative(buffer, buffers[key]) <= 1e-5, key


@pytest.mark.parametrize("name", BLOCKS)
def test_float64_gradients_of_inputs_and_weights_equal_mmseg_modules(name):
    """One training-mode forward and backward in float64: the inputs' and every trainable weight's gradient."""
    reference, ours = pair(name, torch.float64)
    reference.train(), ours.train()
    generator = torch.Generator().manual_seed(3)
    args = BLOCKS[name].example_inputs(2, C, (13, 11), classes=5, generator=generator, dtype=torch.float64)
    grads = []
    for module in (reference, ours):
        leaves = [t.clone().requires_grad_(True) for t in args]
        out = module(*leaves)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append(
            (
                [t.grad for t in leaves],
                {n: p.grad for n, p in module.named_parameters(remove_duplicate=False) if p.grad is not None},
            )
        )
    (reference_inputs, reference_weights), (our_inputs, our_weights) = grads
    for expected, got in zip(reference_inputs, our_inputs, strict=True):
        assert relative(got, expected) <= 1e-10
    expected_weights = from_mmseg(ours, reference_weights)
    assert our_weights.keys() <= expected_weights.keys() and our_weights
    # 1e-9 of the block's largest weight gradient: a gradient that is 0 in exact arithmetic (a key bias, shifting
    # every logit of a query alike) is rounding noise on that scale.
    scale = max(g.abs().max().item() for g in expected_weights.values())
    for key, grad in our_weights.items():
        assert (grad - expected_weights[key]).abs().max().item() <= 1e-9 * scale, key
