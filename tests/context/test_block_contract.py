"""The contract every context block keeps (``dnlseg.context.base``), run for every variant of ``VARIANTS``, every
block of ``BLOCKS`` and the block options that change their computation."""

from functools import partial

import pytest
import torch
from torch import nn

from dnlseg.context import (
    ANALYSES,
    BLOCKS,
    BRANCHES,
    VARIANTS,
    ContextBlock,
    CrissCrossAttention2d,
    InterlacedSparseAttention2d,
    NonLocalBase,
    ObjectContextAttention2d,
    PositionAttention2d,
    capture_attention,
    find_context_blocks,
)
from dnlseg.context.whitening import WHITENINGS

C = 8
BLOCK_C = 16  # BLOCKS' heads: C' = C / 8 query/key channels for PAM and CC
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
BLOCK_OPTIONS = {
    "cc": {"one_step": dict(recurrence=1)},
    "isa": {"small_groups": dict(group_size=(2, 3))},
    "ema": {"few_bases": dict(num_bases=3, num_stages=1)},
    "ocr": {"scaled_gather": dict(scale=2.0)},
    "apnb": {"small_pyramid": dict(pool_scales=(1, 2))},
}
CASES = {name: (VARIANTS, name, {}) for name, v in VARIANTS.items() if v.block is not None}
CASES |= {f"{name}-{opt}": (VARIANTS, name, kw) for name, options in OPTIONS.items() for opt, kw in options.items()}
CASES |= {name: (BLOCKS, name, {}) for name in BLOCKS}
CASES |= {f"{name}-{opt}": (BLOCKS, name, kw) for name, options in BLOCK_OPTIONS.items() for opt, kw in options.items()}


def make(case: str, attention: str | None = None, dtype=torch.float32) -> nn.Module:
    table, name, kwargs = CASES[case]
    torch.manual_seed(0)
    if attention is not None:
        kwargs = {**kwargs, "attention": attention}
    return table[name].build(C if table is VARIANTS else BLOCK_C, **kwargs).to(dtype)


def inputs(case: str, batch: int, size: tuple[int, int], dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    """The block's forward arguments: x (N, C, H, W); BLOCKS' AFNB (low, high), OCR (x, coarse logits)."""
    table, name, _ = CASES[case]
    if table is VARIANTS:
        return (torch.randn(batch, C, *size, dtype=dtype),)
    return BLOCKS[name].example_inputs(batch, BLOCK_C, size, classes=3, dtype=dtype)


def query_map(case: str, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The input whose shape the output keeps: x, or AFNB's high-level map."""
    table, name, _ = CASES[case]
    return args[-1] if table is BLOCKS and BLOCKS[name].inputs == ("low", "high") else args[0]


def paths(case: str) -> tuple[str | None, ...]:
    """The attention paths the block declares (None: its one way to compute)."""
    table, name, _ = CASES[case]
    return table[name].block.attention_paths or (None,)


def identity_at_init(case: str) -> bool:
    """Every variant starts as the identity, except the official output mode with a unary term (gamma = 0 silences
    only the pairwise part, and the norm after ``out`` is not zero-initialised); of BLOCKS, those the table says."""
    table, name, _ = CASES[case]
    if table is BLOCKS:
        return BLOCKS[name].identity_at_init
    block = make(case)
    return getattr(block, "gamma", None) is None or getattr(block, "unary_source", None) is None


def exact_gradient(case: str) -> bool:
    """False for a block whose attention runs under no_grad (EMA): its gradient leaves the attention out on purpose."""
    return all("logit_gradients" not in b.undefined_analyses for b in find_context_blocks(make(case)).values())


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
            elif type(module).__name__ == "GlobalContext2d":  # GCNet: the transform's last conv
                module.out[-1].weight.normal_(0, 1.0)
        for name, parameter in block.named_parameters():  # BLOCKS: gammas and ANN's zero-initialised output conv
            if name.endswith("gamma") and not parameter.any():
                parameter.fill_(0.7)
            elif parameter.dim() == 4 and not parameter.any():
                parameter.normal_(0, parameter.shape[1] ** -0.5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (1, 9), (3, 1)])
def test_block_keeps_shape_for_odd_and_non_square_inputs(case, size):
    args = inputs(case, 2, size)
    for attention in paths(case):
        assert make(case, attention)(*args).shape == query_map(case, args).shape


@pytest.mark.parametrize("case", [c for c in CASES if identity_at_init(c)])
def test_block_is_identity_at_init(case):
    args = inputs(case, 2, (5, 6))
    for attention in paths(case):
        block = make(case, attention)
        torch.testing.assert_close(block.train()(*args), args[0], rtol=0, atol=0)
        torch.testing.assert_close(block.eval()(*args), args[0], rtol=0, atol=0)


def test_the_blocks_that_are_not_the_identity_at_init_are_those_of_papers_without_one():
    assert {c for c in CASES if CASES[c][0] is BLOCKS and not identity_at_init(c)} == {
        c for c in CASES if CASES[c][1] in ("apnb", "afnb", "isa", "ema", "ocr")
    }


@pytest.mark.parametrize("case", [c for c in CASES if len(paths(c)) == 2])
def test_fused_equals_materialized_outputs_and_gradients(case):
    torch.manual_seed(1)
    args = inputs(case, 2, (5, 7))
    results = []
    for attention in ("fused", "materialized"):
        # eval: train-mode BN after ``out`` cancels the value bias, leaving its gradient as rounding noise.
        block = make(case, attention).eval()
        randomise_output(block)
        xi = args[0].clone().requires_grad_(True)
        out = block(xi, *args[1:])
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


@pytest.mark.parametrize("case", [c for c in CASES if exact_gradient(c)])
def test_block_passes_float64_gradcheck(case):
    for attention in paths(case):
        block = make(case, attention, torch.float64).eval()
        randomise_output(block)
        args = tuple(t.requires_grad_(True) for t in inputs(case, 1, (3, 4), torch.float64))
        assert torch.autograd.gradcheck(block, args, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_backward_raises_no_autograd_error_under_anomaly_detection(case):
    for attention in paths(case):
        block = make(case, attention)
        randomise_output(block)
        args = tuple(t.requires_grad_(True) for t in inputs(case, 2, (4, 5)))
        with torch.autograd.set_detect_anomaly(True):
            block(*args).square().sum().backward()
        assert all(torch.isfinite(t.grad).all() for t in args)


@pytest.mark.parametrize("case", CASES)
def test_bf16_autocast_is_finite_and_close_to_fp32(case):
    torch.manual_seed(2)
    args = inputs(case, 2, (6, 6))
    for attention in paths(case):
        block = make(case, attention).eval()
        randomise_output(block)
        reference = block(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(*args)
        assert torch.isfinite(low).all()
        torch.testing.assert_close(low.float(), reference, rtol=0.05, atol=0.05)


# -- the analysis contract -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_trainable_parameter_is_in_exactly_one_named_branch(case):
    outer = make(case)
    blocks = find_context_blocks(outer)  # ISA: its two stages; NL with global context: both blocks
    every = {id(p) for n, p in outer.named_parameters() if p.requires_grad and not n.endswith("logit_scale.log_tau")}
    listed_anywhere = []
    for block in blocks.values():
        branches = block.branches()
        assert set(branches) <= set(BRANCHES) and branches
        listed = [id(p) for params in branches.values() for p in params]
        assert len(listed) == len(set(listed))
        # The learned temperature scales the logits but is no branch of the paper's; a nested block (NL's global
        # context) has branches of its own; frozen parameters (EMA's input conv) are in none.
        nested = {
            id(p) for m in block.modules() if isinstance(m, ContextBlock) and m is not block for p in m.parameters()
        }
        own = {id(p) for n, p in block.named_parameters() if p.requires_grad and not n.startswith("logit_scale.")}
        assert set(listed) == own - nested
        listed_anywhere += listed
    learned_temperature = {id(p) for n, p in outer.named_parameters() if "logit_scale." in n}
    assert set(listed_anywhere) == every - learned_temperature


@pytest.mark.parametrize("case", CASES)
def test_every_block_declares_its_paths_and_the_analyses_without_meaning_for_it(case):
    table, name, _ = CASES[case]
    outer = make(case)
    assert type(outer).attention_paths in ((), ("fused", "materialized"))
    for block in find_context_blocks(outer).values():
        assert set(block.undefined_analyses) <= set(ANALYSES)
        assert all(len(reason) > 20 for reason in block.undefined_analyses.values())


@pytest.mark.parametrize("case", CASES)
def test_capture_leaves_outputs_bitwise_unchanged_and_records_each_call(case):
    torch.manual_seed(3)
    for attention in paths(case):
        block = make(case, attention).eval()
        randomise_output(block)
        args = inputs(case, 2, (5, 6))
        plain, plain_one = block(*args), block(*(t[:1] for t in args))
        with capture_attention(block) as captured:
            first, second = block(*args), block(*(t[:1] for t in args))
        assert torch.equal(first, plain) and torch.equal(second, plain_one)
        steps = getattr(block, "recurrence", 1)  # CC publishes each of its steps
        for records in captured.values():  # the block, or its stages (ISA); a nested block has its own entry
            assert [r.output.shape[0] for r in records] == [2] * steps + [1] * steps
        block(*args)  # after the capture closed: nothing more is recorded
        assert all(len(records) == 2 * steps for records in captured.values())


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
@pytest.mark.parametrize("case", CASES)
def test_captured_factors_give_the_output_the_block_computed(case, grad):
    """y = combine(p, u) @ v from the factors alone, for every block whose weights are a function of (p, u); also
    under no_grad, as in validation, where a block may work in place on its own buffers (not on a captured one)."""
    torch.manual_seed(4)
    block = make(case, paths(case)[0], torch.float64).eval()
    with capture_attention(block) as captured, torch.set_grad_enabled(grad):
        block(*inputs(case, 2, (5, 6), torch.float64))
    for record in (r for records in captured.values() for r in records):
        Kh, Kw = record.key_size  # the key grid, or (Pk, 1) for keys that are not pixels
        assert Kh * Kw == record.values.shape[1]
        if record.combine is None:  # only dot-product NL: w = q.k / Pk is no function of (p, u)
            assert case == "nl-dot_product"  # test_non_local.py checks its factors
            continue
        weights = record.weights()  # (N, P or 1, Pk), 0 outside each query's keys
        torch.testing.assert_close(weights @ record.values, record.output, rtol=1e-10, atol=1e-10)
        H, W = record.query_size
        if record.pairwise_query is not None:  # rows: the same as the corresponding rows of the whole map
            Q = record.pairwise_query.shape[1]
            rows = torch.tensor([[0, 7 % Q, Q - 1], [3 % Q, 3 % Q, Q // 2]])
            torch.testing.assert_close(
                record.weights(rows), torch.gather(weights, 1, rows[..., None].expand(-1, -1, weights.shape[-1]))
            )
            assert Q == H * W


@pytest.mark.parametrize("case", [c for c in CASES if exact_gradient(c)])
def test_the_captured_output_is_on_the_path_to_the_blocks_output(case):
    """dL/dy at the captured output exists and is what the probe reads (it takes dL/dw_ij = dL/dy_i . v_j): a copy of
    y that the block does not use downstream (e.g. a transposed view captured after the fact) gets no gradient."""
    torch.manual_seed(6)
    block = make(case, paths(case)[0], torch.float64).train()
    randomise_output(block)
    args = [t.requires_grad_(t.is_floating_point()) for t in inputs(case, 2, (5, 6), torch.float64)]
    with capture_attention(block) as captured:
        out = block(*args)
    records = [r for calls in captured.values() for r in calls]
    assert records
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    grads = torch.autograd.grad(loss, [r.output for r in records], allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in grads), [g is None for g in grads]


def has_pairwise(case: str) -> bool:
    table, name, _ = CASES[case]
    return table is BLOCKS or VARIANTS[name].pairwise != "-"


@pytest.mark.parametrize("case", [c for c in CASES if has_pairwise(c)])
def test_pairwise_mass_with_the_fused_kernel_equals_the_materialised_sum(case):
    torch.manual_seed(5)
    block = make(case).eval()
    with capture_attention(block) as captured:
        block(*inputs(case, 2, (6, 7)))
    for record in (r for records in captured.values() for r in records if r.pairwise_query is not None):
        Pk = record.pairwise_key.shape[1]
        onehot = torch.nn.functional.one_hot(torch.randint(0, 3, (2, Pk)), 3).float()  # (N, Pk, K)
        expected = record.pairwise_attention() @ onehot  # (N, P, Pk) @ (N, Pk, K), 0 outside each query's keys
        torch.testing.assert_close(record.pairwise_mass(onehot), expected, rtol=1e-5, atol=1e-6)


# The blocks built as (in_channels, reduction), with the channel counts each refuses: none, a reduction of 0 or below,
# channels that the reduction does not divide.
REDUCTION_CASES = {
    PositionAttention2d: [(0, 8), (16, 0), (16, -8), (12, 8)],
    CrissCrossAttention2d: [(0, 8), (16, 0), (16, -8), (12, 8)],
    ObjectContextAttention2d: [(0, 2), (8, 0), (8, -2), (9, 2)],
    InterlacedSparseAttention2d: [(0, 2), (8, 0), (8, -2), (9, 2)],
}


@pytest.mark.parametrize(
    ("block", "in_channels", "reduction"),
    [(block, *case) for block, cases in REDUCTION_CASES.items() for case in cases],
    ids=[
        f"{block.__name__}-{kind}"
        for block in REDUCTION_CASES
        for kind in ("no_channels", "zero_reduction", "negative_reduction", "not_a_multiple")
    ],
)
def test_channels_that_are_not_a_positive_multiple_of_the_reduction_are_refused(block, in_channels, reduction):
    with pytest.raises(ValueError, match=f"in_channels={in_channels} must be a positive multiple of reduction="):
        block(in_channels, reduction)


@pytest.mark.parametrize("block", [PositionAttention2d, CrissCrossAttention2d], ids=lambda b: b.__name__)
def test_one_channel_without_reduction_is_a_block_of_one_query_channel(block):
    one = block(1, reduction=1)
    assert one.query.out_channels == one.key.out_channels == 1 and one.value.out_channels == 1
    assert one(torch.randn(1, 1, 2, 3)).shape == (1, 1, 2, 3)
