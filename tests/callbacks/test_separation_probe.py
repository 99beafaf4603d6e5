"""SeparationProbe: logit-gradient norms and cross-sensitivity, without changing training."""

import numpy as np
import pytest
import torch

from dnlseg.callbacks import SeparationProbe
from dnlseg.context import DisentangledNonLocal2d, NonLocal2d, capture_attention
from dnlseg.evaluation import cross_sensitivity
from dnlseg.evaluation.tensorboard_scalars import read_scalars
from tests.callbacks.conftest import final_weights


def test_probe_logs_finite_values_and_separates_dnl_from_nl(fit):
    cross = {}
    for context in ("nl", "dnl"):
        trainer = fit(context=context, callbacks=[SeparationProbe(every_n_steps=2)])
        scalars = read_scalars(trainer.logger.log_dir)
        prefix = "separation/decode_head.context/"
        for name in ("pairwise_logit_grad", "unary_logit_grad", "cross_sensitivity"):
            steps, values = scalars[prefix + name]
            assert steps.tolist() == [2, 4]
            assert np.isfinite(values).all()
        cross[context] = scalars[prefix + "cross_sensitivity"][1].max()
    assert cross["dnl"] == 0.0
    assert cross["nl"] > 1e-4


def test_probe_leaves_weights_bitwise_equal_to_a_run_without_it(fit):
    for context in ("nl", "dnl"):
        with_probe = final_weights(fit(context=context, callbacks=[SeparationProbe(every_n_steps=1)]))
        without = final_weights(fit(context=context))
        assert with_probe.keys() == without.keys()
        for key in without:
            assert torch.equal(with_probe[key], without[key]), key


def capture_one(block, x):
    """The block's output and the CapturedAttention of that one call."""
    with capture_attention(block) as captured:
        out = block(x)
    ((record,),) = captured.values()
    return out, record


def weighted_sum(out):
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()


def reference_gradients(block, x):
    """p, u and dL/dp, dL/du, dL/dw through an explicit (P, Pk) matrix w = combine(p, u), y = w v: the definition
    the probe had when it materialised the whole attention."""
    _, record = capture_one(block, x)
    p = record.pairwise_logits().detach().requires_grad_(True)
    u = record.unary_logits.detach().requires_grad_(True)
    w = block.combine(p, u)
    grads = torch.autograd.grad(weighted_sum(block.residual(x, w @ record.values.detach())), [p, u, w])
    return p.detach(), u.detach(), *grads


def probe_metrics(block, x, num_queries):
    out, record = capture_one(block, x)
    (grad_y,) = torch.autograd.grad(weighted_sum(out), record.output)
    probe = SeparationProbe(num_queries=num_queries)
    return probe, probe.block_metrics("b", record, grad_y, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cls", [NonLocal2d, DisentangledNonLocal2d])
def test_probe_on_all_rows_equals_the_materialised_definition(cls):
    torch.manual_seed(0)
    block = cls(8).double().eval()
    torch.nn.init.normal_(block.out_norm.weight)
    x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    p, u, grad_p, grad_u, grad_w = reference_gradients(block, x)
    _, metrics = probe_metrics(block, x, num_queries=20)  # P = 20: every row, in order
    generator = torch.Generator().manual_seed(0)  # the probe draws its direction in float32
    expected_cross = cross_sensitivity(block.combine, p.float(), u.float(), grad_w.float(), 1e-2, generator)
    expected = {
        "pairwise_logit_grad": grad_p.norm(),
        "unary_logit_grad": grad_u.norm(),
        "cross_sensitivity": expected_cross,
    }
    for name, value in expected.items():
        torch.testing.assert_close(metrics[f"separation/b/{name}"], value.float(), rtol=1e-5, atol=1e-12, msg=name)
    assert (expected_cross == 0) == (cls is DisentangledNonLocal2d)


def test_probe_on_sampled_rows_takes_the_reference_gradient_of_those_rows():
    torch.manual_seed(0)
    block = NonLocal2d(8).double().eval()
    torch.nn.init.normal_(block.out_norm.weight)
    x = torch.randn(1, 8, 6, 7, dtype=torch.float64)
    _, _, grad_p, _, _ = reference_gradients(block, x)
    probe, metrics = probe_metrics(block, x, num_queries=5)
    rows = probe.sample_rows(42, 1, torch.Generator().manual_seed(0))[0]  # the rows the probe drew first
    assert rows.unique().numel() == 5
    torch.testing.assert_close(metrics["separation/b/pairwise_logit_grad"], grad_p[0, rows].norm().float())
