"""SeparationProbe: logit-gradient norms and cross-sensitivity, without changing training."""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dnlseg.analysis import cross_sensitivity
from dnlseg.analysis.tensorboard_scalars import read_scalars
from dnlseg.callbacks import SeparationProbe
from dnlseg.context import (
    CrissCrossAttention2d,
    DisentangledNonLocal2d,
    ExpectationMaximizationAttention2d,
    NonLocal2d,
    capture_attention,
)
from dnlseg.models import SegmentationModule
from dnlseg.models.heads import DAHead, EMAHead, OCRHead
from dnlseg.models.losses import LossOptions
from tests.helpers import fake_trainer, final_weights, tiny_batch, tiny_module, tiny_network, wake_context_blocks

PREFIX = "separation/decode_head.context/"


def closed_form_logit_gradients(module, batch):
    """||dL/dp||, ||dL/du|| of DNL from g = dL/dw and docs/science.md section 2.1 (not from autograd through p, u):
    dL/dp_ij = a_ij (g_ij - sum_t a_it g_it), a = softmax_j(p);  dL/du_t = s_t sum_i (g_it - sum_j s_j g_ij)."""
    torch.manual_seed(0)
    with capture_attention(module) as captured:
        loss = module.losses(batch)["loss"]
    (m,) = captured["decode_head.context"]
    (grad_y,) = torch.autograd.grad(loss, m.output)
    g = grad_y @ m.values.transpose(1, 2)  # dL/dw_ij = dL/dy_i . v_j, (N, P, Pk)
    a, s = m.pairwise_logits().softmax(-1), m.unary_logits.softmax(-1)
    grad_p = a * (g - (a * g).sum(-1, keepdim=True))
    grad_u = s * (g - (s * g).sum(-1, keepdim=True)).sum(1, keepdim=True)
    return grad_p.norm().item(), grad_u.norm().item()


def test_probe_tags_the_pairwise_and_unary_logit_gradients_with_their_own_norms():
    module, batch = tiny_module(DisentangledNonLocal2d, loss=LossOptions(aux_weight=0)), tiny_batch()
    expected_p, expected_u = closed_form_logit_gradients(module, batch)
    assert abs(expected_p - expected_u) > 0.1 * expected_p  # far apart: a swap of the two would show
    torch.manual_seed(0)
    metrics = SeparationProbe().probe(fake_trainer(), module, batch)
    assert set(metrics) == {PREFIX + t for t in ("pairwise_logit_grad", "unary_logit_grad", "cross_sensitivity")}
    assert metrics[PREFIX + "pairwise_logit_grad"].item() == pytest.approx(expected_p, rel=1e-4)
    assert metrics[PREFIX + "unary_logit_grad"].item() == pytest.approx(expected_u, rel=1e-4)
    assert metrics[PREFIX + "cross_sensitivity"].item() == 0.0  # DNL: the unary gradient ignores p


@pytest.mark.parametrize(
    "context, tags",
    [
        (partial(DisentangledNonLocal2d, unary=None), {"pairwise_logit_grad"}),
        (partial(DisentangledNonLocal2d, pairwise=False), {"unary_logit_grad"}),
    ],
)
def test_a_block_with_one_term_logs_that_term_only(context, tags):
    metrics = SeparationProbe().probe(fake_trainer(), tiny_module(context), tiny_batch())
    assert set(metrics) == {PREFIX + t for t in tags}
    assert all(v > 0 for v in metrics.values())


def test_probe_runs_on_steps_divisible_by_every_n_steps_and_logs_what_it_measured():
    module, batch = tiny_module(DisentangledNonLocal2d), tiny_batch()
    probe = SeparationProbe(every_n_steps=3)
    for step in range(7):
        trainer = fake_trainer(global_step=step)
        probe.on_train_batch_end(trainer, module, None, batch, 0)
        logged = trainer.loggers[0].metrics
        assert list(logged) == ([step] if step % 3 == 0 else [])
    assert set(logged[6]) == {PREFIX + t for t in ("pairwise_logit_grad", "unary_logit_grad", "cross_sensitivity")}
    other_rank = fake_trainer(global_step=0, global_rank=1)
    probe.on_train_batch_end(other_rank, module, None, batch, 0)
    assert other_rank.loggers[0].metrics == {}  # every rank probes, rank zero logs


def test_probe_restores_batchnorm_statistics_and_the_blocks_and_keeps_the_global_rng():
    module, batch = tiny_module(DisentangledNonLocal2d), tiny_batch()
    buffers = {k: v.clone() for k, v in module.named_buffers()}
    torch.manual_seed(5)
    SeparationProbe().probe(fake_trainer(), module, batch)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # the probe's dropout draws came from a forked stream
    assert all(torch.equal(buffers[k], v) for k, v in module.named_buffers())
    block = module.network.decode_head.context
    assert not block._sinks  # the probe's capture is closed
    assert all(p.grad is None for p in module.parameters())  # no parameter .grad touched


def test_the_perturbation_is_drawn_from_seed_plus_step():
    module, batch = tiny_module(NonLocal2d), tiny_batch()

    def cross(seed, step):
        torch.manual_seed(0)
        metrics = SeparationProbe(seed=seed).probe(fake_trainer(global_step=step), module, batch)
        return metrics[PREFIX + "cross_sensitivity"].item()

    assert cross(2, 3) == cross(4, 1)  # the same generator seed 5
    assert cross(2, 3) != cross(3, 3) and cross(2, 3) > 0  # NL: coupled


def test_defaults_probe_every_50_steps_with_a_1_percent_step_and_seed_0():
    probe = SeparationProbe()
    assert (probe.every_n_steps, probe.relative_step, probe.seed) == (50, 1e-2, 0)
    assert SeparationProbe(every_n_steps=1).every_n_steps == 1


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="every_n_steps=0"):
        SeparationProbe(every_n_steps=0)
    with pytest.raises(ValueError, match="relative_step=0"):
        SeparationProbe(relative_step=0)


@pytest.mark.slow  # two tiny fits
def test_probe_logs_finite_values_and_separates_dnl_from_nl(fit):
    cross = {}
    for context in ("nl", "dnl"):
        trainer = fit(context=context, callbacks=[SeparationProbe(every_n_steps=2)])
        scalars = read_scalars(trainer.logger.log_dir)
        for name in ("pairwise_logit_grad", "unary_logit_grad", "cross_sensitivity"):
            steps, values = scalars[PREFIX + name]
            assert steps.tolist() == [2, 4]
            assert np.isfinite(values).all()
        cross[context] = scalars[PREFIX + "cross_sensitivity"][1].max()
    assert cross["dnl"] == 0.0
    assert cross["nl"] > 1e-4


@pytest.mark.slow  # four tiny fits
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
        # The cross-sensitivity is a float32 difference of two gradients 1 % apart: ~1e-7 rounding of its inputs
        # becomes ~1e-4 of it.
        rtol = 1e-3 if name == "cross_sensitivity" else 1e-5
        torch.testing.assert_close(metrics[f"separation/b/{name}"], value.float(), rtol=rtol, atol=1e-12, msg=name)
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


def test_probe_on_sampled_rows_of_a_criss_cross_block_takes_each_querys_row_and_column():
    # CCNet: query i's softmax runs over its row and column; the probe's rows must reach the record's combine
    torch.manual_seed(0)
    block = CrissCrossAttention2d(8, recurrence=1).double().eval()
    torch.nn.init.ones_(block.gamma)
    x = torch.randn(1, 8, 6, 7, dtype=torch.float64)
    out, record = capture_one(block, x)
    (grad_y,) = torch.autograd.grad(weighted_sum(out), record.output)
    p = record.pairwise_logits().detach().requires_grad_(True)  # every row: (1, 42, 42)
    w = record.combine(p, record.unary_logits.detach(), None)  # 0 off each query's cross
    (grad_p,) = torch.autograd.grad(w, p, grad_y @ record.values.detach().transpose(1, 2))
    probe = SeparationProbe(num_queries=5)
    metrics = probe.block_metrics("b", record, grad_y, torch.Generator().manual_seed(0))
    rows = probe.sample_rows(42, 1, torch.Generator().manual_seed(0))[0]  # the rows the probe drew first
    torch.testing.assert_close(metrics["separation/b/pairwise_logit_grad"], grad_p[0, rows].norm().float())
    assert metrics["separation/b/cross_sensitivity"] > 1e-3  # one softmax of p + u: coupled, as NL


def test_a_block_whose_attention_takes_no_gradient_logs_why_instead_of_numbers(caplog):
    # EMA's EM iterations run under no_grad: no logit gradient to measure, and the log says so
    module, batch = tiny_module(DisentangledNonLocal2d, loss=LossOptions(aux_weight=0)), tiny_batch()
    module.network.decode_head.context = ExpectationMaximizationAttention2d(16, 4)
    with caplog.at_level("INFO", logger="dnlseg.callbacks.attention_capture"):
        assert SeparationProbe().probe(fake_trainer(), module, batch) == {}
    reason = ExpectationMaximizationAttention2d.undefined_analyses["logit_gradients"]
    assert f"SeparationProbe: no logit_gradients for decode_head.context: {reason}" in caplog.text


def test_probe_reports_every_context_block_of_a_model_with_two():
    module, batch = tiny_module(DisentangledNonLocal2d, loss=LossOptions(aux_weight=0)), tiny_batch()
    second = DisentangledNonLocal2d(16)
    torch.nn.init.ones_(second.out_norm.weight)  # as tiny_module does: the loss depends on its attention
    module.network.decode_head.context = torch.nn.Sequential(module.network.decode_head.context, second)
    metrics = SeparationProbe().probe(fake_trainer(), module, batch)
    blocks = {tag.rsplit("/", 1)[0] for tag in metrics}
    assert blocks == {"separation/decode_head.context.0", "separation/decode_head.context.1"}
    assert len(metrics) == 6 and all(torch.isfinite(v) for v in metrics.values())


def test_a_block_whose_weights_are_not_a_function_of_logits_is_skipped_without_error():
    # NL's dot-product mode has no softmax: its capture has no combine, there is nothing to probe
    module = tiny_module(partial(NonLocal2d, mode="dot_product"))
    assert SeparationProbe().probe(fake_trainer(), module, tiny_batch()) == {}


def test_the_probe_takes_256_query_rows_by_default_and_at_least_one():
    assert SeparationProbe().num_queries == 256
    assert SeparationProbe(num_queries=1).num_queries == 1
    with pytest.raises(ValueError, match="^num_queries=0 must be >= 1$"):
        SeparationProbe(num_queries=0)


def reference_probe(module, batch, loss_of, num_queries, seed):
    """What the probe should log, from a forward with the same dropout draws and the loss ``loss_of(network output)``
    summed by hand from cross-entropies (not ``module.losses``): dL/dy of each block, then ``block_metrics`` with
    the probe's generator, block by block."""
    torch.manual_seed(seed)
    with capture_attention(module, max_calls=1) as captured:
        loss = loss_of(module.network(batch["image"]))
    calls = {name: records[0] for name, records in captured.items()}
    grads = torch.autograd.grad(loss, [call.output for call in calls.values()])
    probe, generator = SeparationProbe(num_queries=num_queries), torch.Generator().manual_seed(0)
    metrics = {}
    for (name, call), grad_y in zip(calls.items(), grads, strict=True):
        metrics |= probe.block_metrics(name, call, grad_y, generator)
    return metrics


@pytest.mark.parametrize("head", ["danet", "ocrnet"])
def test_the_probes_loss_counts_the_side_and_aux_losses_once_with_their_training_weights(head):
    """DANet's PAM-only and CAM-only losses (weight 1 each) and OCR's cascade (its aux FCN head, 0.4) enter the probe's
    loss once: its numbers equal those of the hand-summed training loss. DANet's side losses counted twice would change
    them; OCR's aux loss takes no part in dL/dy (the aux logits feed the attention, they do not read its output)."""
    network = tiny_network(decode_head=partial(DAHead, pam_reduction=4) if head == "danet" else OCRHead)
    torch.manual_seed(0)
    module = wake_context_blocks(SegmentationModule(num_classes=3, network=network))
    batch = tiny_batch()
    masks = batch["mask"]

    def cross_entropy(logits):
        logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, masks, ignore_index=255)  # no ignored pixel: the mean over all of them

    def training_loss(out, twice=False):
        sides = sum(cross_entropy(logits) for logits in out.side_logits.values())  # DANet: pam, cam
        extra = sides if twice and out.side_logits else 0.4 * cross_entropy(out.aux_logits) if twice else 0
        return cross_entropy(out.logits) + 0.4 * cross_entropy(out.aux_logits) + sides + extra

    torch.manual_seed(1)
    metrics = SeparationProbe(num_queries=16).probe(fake_trainer(), module, batch)
    expected = reference_probe(module, batch, training_loss, 16, seed=1)
    assert set(metrics) == set(expected) and len(expected) == 3 * (2 if head == "danet" else 1)
    for tag, value in expected.items():
        assert metrics[tag].item() == pytest.approx(value.item(), rel=1e-5), tag
    twice = reference_probe(module, batch, partial(training_loss, twice=True), 16, seed=1)
    gradients = [tag for tag in expected if tag.endswith("_logit_grad")]
    changed = [twice[tag].item() != pytest.approx(expected[tag].item(), rel=1e-3) for tag in gradients]
    assert changed == [head == "danet"] * len(gradients)


def test_the_probe_leaves_emas_bases_as_they_were_though_its_training_forward_moves_them():
    torch.manual_seed(0)
    module = SegmentationModule(num_classes=3, network=tiny_network(decode_head=partial(EMAHead, num_bases=4)))
    block = module.network.decode_head.attention
    before = block.bases.clone()
    SeparationProbe().probe(fake_trainer(), module.train(), tiny_batch())
    assert torch.equal(block.bases, before)
    module.losses(tiny_batch())  # a training forward moves them: the probe's did and was undone
    assert not torch.allclose(block.bases, before)
