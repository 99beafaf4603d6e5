"""BranchGradientMonitor: per-branch gradient norms of every context block in TensorBoard."""

import re

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from torch import nn

from dnlseg.analysis.tensorboard_scalars import read_scalars
from dnlseg.callbacks import BranchGradientMonitor, SeparationProbe
from dnlseg.callbacks.branch_gradients import branch_gradient_norms, separation_layout
from dnlseg.context import DisentangledNonLocal2d, NonLocal2d
from tests.helpers import RecordingLogger, fake_trainer, tiny_batch, tiny_module


def test_norms_equal_the_norm_of_each_branch_gradient():
    block = DisentangledNonLocal2d(8)
    nn.init.ones_(block.out_norm.weight)
    block(torch.randn(2, 8, 4, 5)).square().sum().backward()
    norms = branch_gradient_norms(block)

    def norm(*modules):
        return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()]).norm()

    assert set(norms) == {"query", "key", "value", "unary", "out", "pairwise", "unary_over_pairwise"}
    for branch in ("query", "key", "value", "unary"):
        torch.testing.assert_close(norms[branch], norm(getattr(block, branch)))
    torch.testing.assert_close(norms["out"], norm(block.out, block.out_norm))
    torch.testing.assert_close(norms["pairwise"], norm(block.query, block.key))
    torch.testing.assert_close(norms["unary_over_pairwise"], norm(block.unary) / norm(block.query, block.key))
    assert len({round(v.item(), 6) for v in norms.values()}) == len(norms)  # all different: a mix-up would show


def test_monitor_logs_the_norms_of_the_gradients_before_the_optimizer_step():
    module, batch = tiny_module(DisentangledNonLocal2d), tiny_batch()
    module.losses(batch)["loss"].backward()
    block = module.network.decode_head.context
    expected = {f"branch_grad/decode_head.context/{k}": v.item() for k, v in branch_gradient_norms(block).items()}
    monitor = BranchGradientMonitor(every_n_steps=2)
    for step in range(5):
        trainer = fake_trainer(global_step=step)
        monitor.on_before_optimizer_step(trainer, module, None)
        assert trainer.loggers[0].metrics == ({step: pytest.approx(expected)} if step % 2 == 0 else {})
    other_rank = fake_trainer(global_step=0, global_rank=1)
    monitor.on_before_optimizer_step(other_rank, module, None)
    assert other_rank.loggers[0].metrics == {}  # rank zero logs the all-reduced gradients once


def test_a_block_without_gradients_or_a_module_without_blocks_logs_nothing():
    monitor, trainer = BranchGradientMonitor(), fake_trainer()
    monitor.on_before_optimizer_step(trainer, tiny_module(DisentangledNonLocal2d), None)  # no backward yet
    monitor.on_before_optimizer_step(trainer, tiny_module(None), None)
    assert trainer.loggers[0].metrics == {}
    assert branch_gradient_norms(NonLocal2d(8)) == {}


# What each chart of a block's layout means, written out here (not derived from the layout): its title -> the tag.
CHART_TAGS = {
    "pairwise branch gradient norm (query and key)": "branch_grad/{b}/pairwise",
    "unary branch gradient norm": "branch_grad/{b}/unary",
    "unary / pairwise branch gradient ratio": "branch_grad/{b}/unary_over_pairwise",
    "pairwise logit gradient ||dL/dp||": "separation/{b}/pairwise_logit_grad",
    "unary logit gradient ||dL/du||": "separation/{b}/unary_logit_grad",
    "cross-sensitivity (0 = separated)": "separation/{b}/cross_sensitivity",
    **{f"{branch} branch gradient norm": f"branch_grad/{{b}}/{branch}" for branch in ("query", "key", "value", "out")},
}


def written_layout(log_dir) -> layout_pb2.Layout:
    """The custom-scalars layout in a run's event file, as TensorBoard's plugin reads it."""
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    (event,) = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


def logged_run(tmp_path, name: str, context) -> tuple[layout_pb2.Layout, set[str]]:
    """The layout and scalar tags a tiny module with ``context`` writes through both callbacks: one backward, the
    monitor's norms, the probe's logit gradients (every tag a fit of that head logs), on a real TensorBoardLogger."""
    module, batch = tiny_module(context), tiny_batch()
    logger = TensorBoardLogger(tmp_path, name=name)
    trainer = fake_trainer(loggers=[logger])
    monitor = BranchGradientMonitor()
    monitor.on_fit_start(trainer, module)
    module.losses(batch)["loss"].backward()
    monitor.on_before_optimizer_step(trainer, module, None)
    SeparationProbe(every_n_steps=1).on_train_batch_end(trainer, module, None, batch, 0)
    logger.experiment.flush()
    return written_layout(logger.log_dir), set(read_scalars(logger.log_dir))


def test_every_charts_regex_matches_exactly_the_tags_it_means_in_an_nl_and_a_dnl_run(tmp_path):
    """TensorBoard matches a chart's regexes with ``re.match`` against every tag of a run: a regex that is a prefix
    of another tag (``.../unary`` of ``.../unary_over_pairwise``) or whose ``.`` matches any character would put
    values of another scale into the chart."""
    runs = {
        name: logged_run(tmp_path, name, context)
        for name, context in (("nl", NonLocal2d), ("dnl", DisentangledNonLocal2d))
    }
    tags = set.union(*(logged for _, logged in runs.values()))
    decoy = "branch_grad/decode_headXcontext/pairwise"  # what an unescaped "." would match too
    block = "decode_head.context"
    assert {f"branch_grad/{block}/unary_over_pairwise", f"separation/{block}/unary_logit_grad"} <= tags
    for name, (layout, logged) in runs.items():
        charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
        assert charts.keys() == CHART_TAGS.keys(), name
        for title, regexes in charts.items():
            intended = CHART_TAGS[title].format(b=block)
            matched = {tag for tag in tags | {decoy} for regex in regexes if re.compile(regex).match(tag)}
            assert matched == {intended}, (name, title, matched)
        assert all("/unary" not in tag for tag in logged if tag.startswith("branch_grad")) == (name == "nl")


def test_one_quantity_per_chart_so_pairwise_and_unary_of_one_run_never_share_a_colour():
    layout = separation_layout(["a", "b"])
    assert list(layout) == [
        "gradient separation: a",
        "branch gradient norms: a",
        "gradient separation: b",
        "branch gradient norms: b",
    ]
    for charts in layout.values():
        assert all(kind == "Multiline" and len(regexes) == 1 for kind, regexes in charts.values())
    charts = layout["gradient separation: b"]
    assert charts["pairwise branch gradient norm (query and key)"] == ["Multiline", [r"branch_grad/b/pairwise$"]]
    assert charts["unary branch gradient norm"] == ["Multiline", [r"branch_grad/b/unary$"]]


def test_layout_is_written_to_tensorboard_at_fit_start_on_rank_zero_only(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import metadata

    module = tiny_module(DisentangledNonLocal2d)
    for rank, layout in ((0, True), (1, True), (0, False)):
        logger = TensorBoardLogger(tmp_path, name=f"rank{rank}_{layout}")
        BranchGradientMonitor(tensorboard_layout=layout).on_fit_start(
            fake_trainer(global_rank=rank, loggers=[logger]), module
        )
        logger.experiment.flush()
        accumulator = EventAccumulator(logger.log_dir)
        accumulator.Reload()
        written = accumulator.Tags()["tensors"]
        assert written == ([metadata.CONFIG_SUMMARY_TAG] if rank == 0 and layout else [])


def test_layout_names_the_blocks_without_the_network_prefix_and_needs_a_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import metadata

    module, logger = tiny_module(DisentangledNonLocal2d), TensorBoardLogger(tmp_path, name="layout")
    monitor = BranchGradientMonitor()
    assert (monitor.every_n_steps, monitor.tensorboard_layout) == (1, True)  # the defaults: every step, a layout
    monitor.on_fit_start(fake_trainer(loggers=[RecordingLogger(), logger]), module)  # a non-TensorBoard logger too
    logger.experiment.flush()
    accumulator = EventAccumulator(logger.log_dir)
    accumulator.Reload()
    layout = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto.string_val[0]
    assert b"gradient separation: decode_head.context" in layout and b"network." not in layout


def test_the_ratio_of_small_gradients_is_not_clamped():
    block = DisentangledNonLocal2d(8)
    nn.init.ones_(block.out_norm.weight)
    (block(torch.randn(2, 8, 4, 5)).square().sum() * 1e-6).backward()
    norms = branch_gradient_norms(block)
    assert norms["pairwise"] < 1e-3
    torch.testing.assert_close(norms["unary_over_pairwise"], norms["unary"] / norms["pairwise"])


def test_every_n_steps_below_one_raises():
    with pytest.raises(ValueError, match="every_n_steps=0"):
        BranchGradientMonitor(every_n_steps=0)


@pytest.mark.slow  # a tiny fit
def test_monitor_logs_every_branch_tag_with_finite_values(fit, tmp_path):
    trainer = fit(context="dnl", callbacks=[BranchGradientMonitor()])
    scalars = read_scalars(trainer.logger.log_dir)
    prefix = "branch_grad/decode_head.context/"
    for branch in ("query", "key", "value", "unary", "out", "pairwise", "unary_over_pairwise"):
        steps, values = scalars[prefix + branch]
        assert steps.tolist() == [0, 1, 2, 3]
        assert np.isfinite(values).all()
    assert (scalars[prefix + "pairwise"][1][1:] > 0).all()


@pytest.mark.slow  # a tiny fit
def test_monitor_on_nl_has_no_unary_branch(fit):
    trainer = fit(context="nl", callbacks=[BranchGradientMonitor(every_n_steps=2)])
    scalars = read_scalars(trainer.logger.log_dir)
    assert scalars["branch_grad/decode_head.context/pairwise"][0].tolist() == [0, 2]
    assert not any(tag.endswith("/unary") for tag in scalars)


@pytest.mark.slow  # a tiny fit
def test_custom_scalars_layout_is_written_at_fit_start(fit):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import metadata

    trainer = fit(context="dnl", callbacks=[BranchGradientMonitor()], max_steps=1)
    acc = EventAccumulator(trainer.logger.log_dir)
    acc.Reload()
    layout_tensor = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[0]
    assert rb"branch_grad/decode_head\.context/pairwise$" in layout_tensor.tensor_proto.string_val[0]
