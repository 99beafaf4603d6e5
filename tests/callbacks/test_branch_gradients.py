"""BranchGradientMonitor: per-branch gradient norms of every context block in TensorBoard."""

import numpy as np
import torch
from torch import nn

from dnlseg.callbacks import BranchGradientMonitor
from dnlseg.callbacks.branch_gradients import branch_gradient_norms
from dnlseg.context import DisentangledNonLocal2d
from dnlseg.evaluation.tensorboard_scalars import read_scalars


def test_norms_equal_the_norm_of_each_branch_gradient():
    block = DisentangledNonLocal2d(8)
    nn.init.ones_(block.out_norm.weight)
    block(torch.randn(2, 8, 4, 5)).square().sum().backward()
    norms = branch_gradient_norms(block)

    def norm(*modules):
        return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()]).norm()

    torch.testing.assert_close(norms["query"], norm(block.query))
    torch.testing.assert_close(norms["unary"], norm(block.unary))
    torch.testing.assert_close(norms["out"], norm(block.out, block.out_norm))
    torch.testing.assert_close(norms["pairwise"], norm(block.query, block.key))
    torch.testing.assert_close(norms["unary_over_pairwise"], norm(block.unary) / norm(block.query, block.key))


def test_monitor_logs_every_branch_tag_with_finite_values(fit, tmp_path):
    trainer = fit(context="dnl", callbacks=[BranchGradientMonitor()])
    scalars = read_scalars(trainer.logger.log_dir)
    prefix = "branch_grad/decode_head.context/"
    for branch in ("query", "key", "value", "unary", "out", "pairwise", "unary_over_pairwise"):
        steps, values = scalars[prefix + branch]
        assert steps.tolist() == [0, 1, 2, 3]
        assert np.isfinite(values).all()
    assert (scalars[prefix + "pairwise"][1][1:] > 0).all()


def test_monitor_on_nl_has_no_unary_branch(fit):
    trainer = fit(context="nl", callbacks=[BranchGradientMonitor(every_n_steps=2)])
    scalars = read_scalars(trainer.logger.log_dir)
    assert scalars["branch_grad/decode_head.context/pairwise"][0].tolist() == [0, 2]
    assert not any(tag.endswith("/unary") for tag in scalars)


def test_custom_scalars_layout_is_written_at_fit_start(fit):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import metadata

    trainer = fit(context="dnl", callbacks=[BranchGradientMonitor()], max_steps=1)
    acc = EventAccumulator(trainer.logger.log_dir)
    acc.Reload()
    layout_tensor = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0]
    assert b"branch_grad/decode_head.context/pairwise" in layout_tensor.tensor_proto.string_val[0]
