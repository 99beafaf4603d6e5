"""The contract every context block keeps (``dnlseg.context.base``), run for every variant of ``VARIANTS`` and
for the block options that change its computation."""

from functools import partial

import pytest
import torch
from torch import nn

from dnlseg.context import BRANCHES, VARIANTS, ContextBlock, NonLocalBase, capture_attention
from dnlseg.context.whitening import WHITENINGS

C = 8
# Options that change what a block computes, beyond the variants of the table.
OPTIONS = {
    "nl": {
        "dot_product": dict(mode="dot_product"),
        "gaussian": dict(mode="gaussian"),
        "downsample": dict(downsample=True),
    },
    "nl_fork": {"unfixed_scale": dict(fixbug=False), "no_out": dict(use_out=False)},
    "dnl": {
        "downsample": dict(downsample=True),
        "learned_temperature": dict(learn_temperature=True, temperature=0.5),
        "softplus_temperature": dict(learn_temperature=True, temperature_form="softplus"),
        "groupnorm": dict(norm_layer=partial(nn.GroupNorm, 2)),
        "no_norm": dict(norm_layer=None),
        "no_out": dict(use_out=False),
        "no_out_no_norm": dict(use_out=False, norm_layer=None),
        **{f"whitening_{kind}": dict(whitening=kind) for kind in WHITENINGS},
        "no_whitening": dict(whitening=None),
        "unfixed_scale": dict(fixbug=False),
    },
    "dnl_shared_key": {f"scale_{scale}": dict(shared_key_scale=scale) for scale in ("none", "temperature")},
    "dnl_official": {"no_out": dict(use_out=False), "no_unary": dict(unary=None)},
}
CASES = {name: (name, {}) for name, v in VARIANTS.items() if v.block is not None}
CASES |= {f"{name}-{option}": (name, kwargs) for name, options in OPTIONS.items() for option, kwargs in options.items()}


def make(case: str, attention: str = "fused", dtype=torch.float32) -> nn.Module:
    name, kwargs = CASES[case]
    torch.manual_seed(0)
    variant = VARIANTS[name]
    if issubclass(variant.block, NonLocalBase):
        kwargs = {**kwargs, "attention": attention}
    return variant.build(C, **kwargs).to(dtype)


def paths(case: str) -> tuple[str, ...]:
    """The attention paths a block has: non-local blocks fused and materialised, others one."""
    return ("fused", "materialized") if issubclass(VARIANTS[CASES[case][0]].block, NonLocalBase) else ("fused",)


def identity_at_init(case: str) -> bool:
    """Every block starts as the identity, except the official output mode with a unary term (gamma = 0 silences
    only the pairwise part, and the norm after ``out`` is not zero-initialised)."""
    block = make(case)
    return getattr(block, "gamma", None) is None or getattr(block, "unary_source", None) is None


def randomise_output(block: nn.Module) -> None:
    """Undo the zero init of the output (norm, conv, value, transform, gamma) so gradients reach every branch."""
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, NonLocalBase):
                if isinstance(module.out_norm, (nn.BatchNorm2d, nn.GroupNorm)):
                    module.out_norm.weight.normal_(0, 1.0)
                else:  # the zero-initialised conv: a conv's usual scale
                    last = module.out if module.out is not None else module.value
                    last.weight.normal_(0, last.weight.shape[1] ** -0.5)
                if getattr(module, "gamma", None) is not None:
                    module.gamma.fill_(0.7)
            elif isinstance(module, ContextBlock):  # GCNet: the transform's last conv
                module.out[-1].weight.normal_(0, 1.0)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (1, 9), (3, 1)])
def test_block_keeps_shape_for_odd_and_non_square_inputs(case, size):
    x = torch.randn(2, C, *size)
    for attention in paths(case):
        assert make(case, attention)(x).shape == x.shape


@pytest.mark.parametrize("case", [c for c in CASES if identity_at_init(c)])
def test_block_is_identity_at_init(case):
    x = torch.randn(2, C, 5, 6)
    for attention in paths(case):
        block = make(case, attention)
        torch.testing.assert_close(block.train()(x), x, rtol=0, atol=0)
        torch.testing.assert_close(block.eval()(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("case", [c for c in CASES if len(paths(c)) == 2])
def test_fused_equals_materialized_outputs_and_gradients(case):
    torch.manual_seed(1)
    x = torch.randn(2, C, 5, 7)
    results = []
    for attention in ("fused", "materialized"):
        # eval: train-mode BN after ``out`` cancels the value bias, leaving its gradient as rounding noise.
        block = make(case, attention).eval()
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
    # 1e-5 relative to the largest gradient entry of the block (tau = 0.05 makes them ~100 here): a gradient that
    # is 0 in exact arithmetic (e.g. the key bias under spatial whitening) is rounding noise on that scale.
    atol = 1e-5 * max(1.0, max(g.abs().max().item() for g in gp_m.values()))
    for key in gp_f:
        torch.testing.assert_close(gp_f[key], gp_m[key], rtol=1e-5, atol=atol, msg=key)


@pytest.mark.parametrize("case", CASES)
def test_block_passes_float64_gradcheck(case):
    for attention in paths(case):
        block = make(case, attention, torch.float64).eval()
        randomise_output(block)
        x = torch.randn(1, C, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_backward_raises_no_autograd_error_under_anomaly_detection(case):
    for attention in paths(case):
        block = make(case, attention)
        randomise_output(block)
        x = torch.randn(2, C, 4, 5, requires_grad=True)
        with torch.autograd.set_detect_anomaly(True):
            block(x).square().sum().backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("case", CASES)
def test_bf16_autocast_is_finite_and_close_to_fp32(case):
    torch.manual_seed(2)
    x = torch.randn(2, C, 6, 6)
    for attention in paths(case):
        block = make(case, attention).eval()
        randomise_output(block)
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
        assert torch.isfinite(low).all()
        torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)


# -- the analysis contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_trainable_parameter_is_in_exactly_one_named_branch(case):
    block = make(case)
    branches = block.branches()
    assert set(branches) <= set(BRANCHES) and branches
    listed = [id(p) for params in branches.values() for p in params]
    assert len(listed) == len(set(listed))
    # The learned temperature scales the logits but is no branch of the paper's; a nested block (NL's global
    # context) has branches of its own.
    nested = {id(p) for m in block.modules() if isinstance(m, ContextBlock) and m is not block for p in m.parameters()}
    own = {id(p) for n, p in block.named_parameters() if not n.startswith("logit_scale.")} - nested
    assert set(listed) == own


@pytest.mark.parametrize("case", CASES)
def test_capture_leaves_outputs_bitwise_unchanged_and_records_each_call(case):
    torch.manual_seed(3)
    for attention in paths(case):
        block = make(case, attention).eval()
        randomise_output(block)
        x = torch.randn(2, C, 5, 6)
        plain, plain_one = block(x), block(x[:1])
        with capture_attention(block) as captured:
            first, second = block(x), block(x[:1])
        assert torch.equal(first, plain) and torch.equal(second, plain_one)
        records = captured[""]  # the block itself (a nested block has its own entry)
        assert [r.output.shape[0] for r in records] == [2, 1]
        block(x)  # after the capture closed: nothing more is recorded
        assert len(records) == 2


@pytest.mark.parametrize("case", CASES)
def test_captured_factors_give_the_output_the_block_computed(case):
    """y = combine(p, u) @ v from the factors alone, for every block whose weights are a function of (p, u)."""
    torch.manual_seed(4)
    block = make(case, "fused", torch.float64).eval()
    x = torch.randn(2, C, 5, 6, dtype=torch.float64)
    with capture_attention(block) as captured:
        block(x)
    (record,) = captured[""]
    if record.combine is None:
        return  # dot-product NL: w = q.k / Pk is no function of (p, u); test_non_local.py checks its factors
    weights = record.weights()  # (N, P or 1, Pk)
    torch.testing.assert_close(weights @ record.values, record.output, rtol=1e-10, atol=1e-10)
    H, W = record.query_size
    if record.pairwise_query is not None:  # rows: the same as the corresponding rows of the whole map
        rows = torch.tensor([[0, 7, 29], [3, 3, 11]])
        torch.testing.assert_close(
            record.weights(rows), torch.gather(weights, 1, rows[..., None].expand(-1, -1, weights.shape[-1]))
        )
        assert record.pairwise_query.shape[1] == H * W


@pytest.mark.parametrize("case", [c for c in CASES if VARIANTS[CASES[c][0]].pairwise != "-"])
def test_pairwise_mass_with_the_fused_kernel_equals_the_materialised_sum(case):
    torch.manual_seed(5)
    block = make(case).eval()
    with capture_attention(block) as captured:
        block(torch.randn(2, C, 6, 7))
    (record,) = captured[""]
    Pk = record.pairwise_key.shape[1]
    onehot = torch.nn.functional.one_hot(torch.randint(0, 3, (2, Pk)), 3).float()  # (N, Pk, K)
    expected = record.pairwise_attention() @ onehot  # (N, P, Pk) @ (N, Pk, K)
    torch.testing.assert_close(record.pairwise_mass(onehot), expected, rtol=1e-5, atol=1e-6)
