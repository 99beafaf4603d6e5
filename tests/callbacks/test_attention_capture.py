"""AttentionCaptureCallback: the capture's lifecycle across Lightning's hooks; extra forwards that leave no trace."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from dnlseg.callbacks import LossTerms
from dnlseg.callbacks.attention_capture import AttentionCaptureCallback, unmeasured
from dnlseg.context import (
    BLOCKS,
    ChannelAttention2d,
    DisentangledNonLocal2d,
    ExpectationMaximizationAttention2d,
    KeySet,
    capture_attention,
    find_context_blocks,
)
from dnlseg.context.asymmetric_non_local import NOT_PIXELS
from dnlseg.context.channel_attention import NO_PIXELS
from dnlseg.errors import ModuleInterfaceError
from tests.helpers import fake_trainer, tiny_batch, tiny_module


class Recorder(AttentionCaptureCallback):
    """The smallest analysis: records what each captured validation batch hands over."""

    capture_validation = True

    def __init__(self, skip_batch: int | None = None) -> None:
        super().__init__()
        self.skip_batch, self.measured, self.ended = skip_batch, [], 0

    def capture_batch(self, batch_idx, dataloader_idx):
        return batch_idx != self.skip_batch

    def measure_batch(self, trainer, pl_module, captured, batch, batch_idx, dataloader_idx):
        sizes = {name: (call.query_size, call.pairwise_query.shape[0]) for name, call in captured.items()}
        assert trainer is not None and pl_module is not None and batch is not None
        self.measured.append((batch_idx, dataloader_idx, sizes))

    def end_validation(self, trainer, pl_module):
        assert trainer is not None and pl_module is not None
        self.ended += 1


class TwoBlocks(L.LightningModule):
    """Two DNL blocks, ``second`` called twice per forward (on a 3 x 4, then a 1 x 2 grid); not a SegmentationModule."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = DisentangledNonLocal2d(4), DisentangledNonLocal2d(4)

    def forward(self, x):
        x = self.first(x)
        x = self.second(nn.functional.max_pool2d(x, 2))  # (N, 4, 3, 4)
        return self.second(nn.functional.max_pool2d(x, 2))  # (N, 4, 1, 2)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self(batch["image"])


def batches(sizes):
    return [{"image": torch.randn(n, 4, 6, 8)} for n in sizes]


def test_each_validation_batch_hands_over_the_first_call_of_every_block_and_leaves_no_sink():
    module, callback = TwoBlocks(), Recorder()
    loaders = [DataLoader(batches([1, 2]), batch_size=None), DataLoader(batches([3]), batch_size=None)]
    trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, loaders)
    # the first call of ``second`` is on the 3 x 4 grid; the batch size tells the batches apart
    expected = [
        (0, 0, {"first": ((6, 8), 1), "second": ((3, 4), 1)}),
        (1, 0, {"first": ((6, 8), 2), "second": ((3, 4), 2)}),
        (0, 1, {"first": ((6, 8), 3), "second": ((3, 4), 3)}),
    ]
    assert callback.measured == expected and callback.ended == 1
    assert not module.first._sinks and not module.second._sinks


def test_only_accepted_batches_of_a_measured_validation_are_captured():
    module, callback = TwoBlocks(), Recorder(skip_batch=1)
    trainer = fake_trainer()
    open_during = []
    for sanity_checking in (True, False):
        trainer.sanity_checking = sanity_checking
        callback.on_validation_epoch_start(trainer, module)
        for batch_idx, batch in enumerate(batches([1, 1, 1])):
            callback.on_validation_batch_start(trainer, module, batch, batch_idx)
            open_during.append(bool(module.first._sinks))
            module(batch["image"])
            callback.on_validation_batch_end(trainer, module, None, batch, batch_idx)
        callback.on_validation_epoch_end(trainer, module)
    assert open_during == [False, False, False, True, False, True]  # not in the sanity check, not batch 1
    assert [b for b, _, _ in callback.measured] == [0, 2] and callback.ended == 2  # the sanity check ends too


def test_a_module_without_blocks_is_not_captured():
    callback, module = Recorder(), nn.Sequential(nn.Conv2d(4, 4, 1))
    callback.on_validation_epoch_start(fake_trainer(), module)
    callback.on_validation_batch_start(fake_trainer(), module, None, 0)
    assert callback._capture is None


@pytest.mark.parametrize("hook", ["on_exception", "teardown", "on_validation_epoch_end", "on_validation_epoch_start"])
def test_an_open_capture_is_closed_by_an_exception_teardown_or_the_next_epoch(hook):
    module, callback, trainer = TwoBlocks(), Recorder(), fake_trainer()
    callback.on_validation_epoch_start(trainer, module)
    callback.on_validation_batch_start(trainer, module, None, 0)
    assert module.first._sinks and module.second._sinks
    extra = {"on_exception": (RuntimeError("stop"),), "teardown": ("validate",)}.get(hook, ())
    getattr(callback, hook)(trainer, module, *extra)
    assert not module.first._sinks and not module.second._sinks and callback._capture is None


def test_a_callback_without_capture_validation_never_opens_a_capture_in_the_loop():
    class Figures(Recorder):
        capture_validation = False

    module, callback, trainer = TwoBlocks(), Figures(), fake_trainer()
    callback.on_validation_epoch_start(trainer, module)
    callback.on_validation_batch_start(trainer, module, None, 0)
    assert not module.first._sinks
    callback.on_validation_epoch_end(trainer, module)
    assert callback.ended == 1  # its end_validation still runs (e.g. to draw)


def test_an_eval_forward_runs_without_a_graph_in_eval_mode_and_restores_the_training_mode():
    module, image = tiny_module(DisentangledNonLocal2d), tiny_batch(n=1)["image"]
    modes = []
    module.network.register_forward_hook(lambda m, args, out: modes.append(m.training))
    with AttentionCaptureCallback.leave_no_trace(module, grad=False):
        logits, captured = AttentionCaptureCallback.captured_forward(fake_trainer(), module, lambda: module(image))
    assert modes == [False] and module.training
    assert not logits.requires_grad and not captured["decode_head.context"].output.requires_grad
    module.eval()
    with pytest.raises(RuntimeError, match="boom"), AttentionCaptureCallback.leave_no_trace(module, grad=False):
        raise RuntimeError("boom")
    assert not module.training  # an eval-mode module stays in eval mode


def test_a_forward_with_gradients_keeps_the_global_rng_and_the_batchnorm_statistics_even_when_it_raises():
    module, batch = tiny_module(DisentangledNonLocal2d), tiny_batch()  # the head draws dropout masks
    buffers = {k: v.clone() for k, v in module.named_buffers()}
    torch.manual_seed(3)
    with AttentionCaptureCallback.leave_no_trace(module, grad=True):
        loss, captured = AttentionCaptureCallback.captured_forward(
            fake_trainer(), module, lambda: module.losses(batch)["loss"]
        )
        assert loss.requires_grad and module.training
        (grad,) = torch.autograd.grad(loss, captured["decode_head.context"].output)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(after, torch.rand(3))  # the forward's dropout draws came from a forked stream
    assert all(torch.equal(buffers[k], v) for k, v in module.named_buffers())
    assert grad.abs().sum() > 0 and all(p.grad is None for p in module.parameters())
    with pytest.raises(RuntimeError, match="boom"), AttentionCaptureCallback.leave_no_trace(module, grad=True):
        module.losses(batch)
        raise RuntimeError("boom")
    assert all(torch.equal(buffers[k], v) for k, v in module.named_buffers())


def test_the_captured_forward_keeps_the_first_call_of_each_block_that_ran_and_closes_its_capture():
    module = TwoBlocks()
    _, captured = AttentionCaptureCallback.captured_forward(
        fake_trainer(), module, lambda: module.first(torch.ones(1, 4, 6, 8))
    )
    assert list(captured) == ["first"]  # ``second`` did not run
    _, captured = AttentionCaptureCallback.captured_forward(
        fake_trainer(), module, lambda: module(torch.ones(1, 4, 6, 8))
    )
    assert captured["second"].query_size == (3, 4) and set(captured) == set(find_context_blocks(module))
    assert not module.first._sinks and not module.second._sinks


def test_by_default_every_batch_is_captured_and_setup_checks_the_required_protocols():
    assert all(AttentionCaptureCallback().capture_batch(i, j) for i, j in ((0, 0), (5, 1)))

    class NeedsLosses(Recorder):
        requires = (LossTerms,)

    NeedsLosses().setup(fake_trainer(), tiny_module(DisentangledNonLocal2d), "validate")
    with pytest.raises(ModuleInterfaceError, match=r"^trainer.callbacks: NeedsLosses needs the module's `losses`"):
        NeedsLosses().setup(fake_trainer(), TwoBlocks(), "validate")


def test_the_base_measures_training_only_unless_a_subclass_says_how_analyze_runs_it(tmp_path):
    assert AttentionCaptureCallback.analyze_arguments(tmp_path) is None
    assert Recorder().written == [] and Recorder().written is not Recorder().written


class ThreeKinds(nn.Module):
    """A DNL block (every analysis), DANet's CAM (keys are channels) and EMA's attention (no gradient, bases)."""

    def __init__(self) -> None:
        super().__init__()
        self.dnl, self.cam, self.ema = (
            DisentangledNonLocal2d(8),
            ChannelAttention2d(8),
            ExpectationMaximizationAttention2d(8, 4),
        )


def test_an_analysis_without_meaning_for_a_block_skips_it_and_logs_the_blocks_reason_once(caplog):
    module, callback = ThreeKinds(), Recorder()
    with caplog.at_level("INFO", logger="dnlseg.callbacks.attention_capture"):
        assert callback.skipped(module, "category_consistency") == {"cam", "ema"}
        assert callback.skipped(module, "category_consistency") == {"cam", "ema"}  # logged the first time only
        assert callback.skipped(module, "logit_gradients") == {"ema"}
        assert callback.skipped(module, "branch_gradients") == set()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert (
        lines[0]
        == f"Recorder: no category_consistency for cam: {ChannelAttention2d.undefined_analyses['category_consistency']}"
    )
    reason = ExpectationMaximizationAttention2d.undefined_analyses["logit_gradients"]
    assert f"Recorder: no logit_gradients for ema: {reason}" in lines
    with pytest.raises(ValueError, match="^analysis='miou' is not one of 'branch_gradients', "):
        callback.skipped(module, "miou")


def test_keys_that_are_not_pixels_are_measured_through_the_pixels_they_cover_and_lie_on_no_boundary(caplog):
    # ANN's keys are pyramid cells: category consistency and maps through each cell's pixels (keys.cover), no
    # boundary; CAM's channels cover no pixel at all
    module = nn.ModuleDict({"apnb": BLOCKS["apnb"].build(8), "cam": ChannelAttention2d(8)})
    with capture_attention(module) as captured:
        for block in module.values():
            block(torch.randn(1, 8, 6, 7))
    calls = {name: records[0] for name, records in captured.items()}
    callback = Recorder()
    with caplog.at_level("INFO", logger="dnlseg.callbacks.attention_capture"):
        assert callback.skipped(module, "attention_maps", calls) == {"cam"}
        assert callback.skipped(module, "category_consistency", calls) == {"cam"}
        assert callback.skipped(module, "boundary_consistency", calls) == {"apnb", "cam"}
        assert callback.skipped(module, "logit_gradients", calls) == set()
    assert callback.not_computed == {  # the block's own reason first (CAM declares these three), then its keys'
        ("cam", "attention_maps"): NO_PIXELS,
        ("cam", "category_consistency"): NO_PIXELS,
        ("apnb", "boundary_consistency"): NOT_PIXELS,
        ("cam", "boundary_consistency"): NO_PIXELS,
    }
    assert f"Recorder: no attention_maps for cam: {NO_PIXELS}" in caplog.text
    # keys that cover no pixels, whatever their block declares, get the keys' reason
    unknown = Recorder()
    assert unknown.skipped(nn.Module(), "category_consistency", calls) == {"cam"}
    assert unknown.skipped(nn.Module(), "boundary_consistency", calls) == {"apnb", "cam"}
    assert unknown.not_computed == {
        ("cam", "category_consistency"): "its keys are channels, which cover no pixels: they have no labels and no "
        "place on the image",
        ("apnb", "boundary_consistency"): "its keys are pyramid cells, not pixels: no key lies on a boundary",
        ("cam", "boundary_consistency"): "its keys are channels, not pixels: no key lies on a boundary",
    }


class Accepting(Recorder):
    """A Recorder that also records what ``capture_batch`` is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = []

    def capture_batch(self, batch_idx, dataloader_idx):
        self.asked.append((batch_idx, dataloader_idx))
        return True


def test_with_one_validation_loader_every_hook_gets_dataloader_index_0():
    """Lightning passes no dataloader_idx to the batch hooks when there is one loader: the hooks' default is 0."""
    module, callback = TwoBlocks(), Accepting()
    trainer = L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(module, DataLoader(batches([1, 2]), batch_size=None))
    assert callback.asked == [(0, 0), (1, 0)]
    assert [(b, d) for b, d, _ in callback.measured] == [(0, 0), (1, 0)]


def test_token_keys_of_a_key_set_without_a_name_or_a_cover_are_called_tokens_and_cover_no_pixels():
    class Cells(KeySet):  # a key set of its own: not pixels, no ``what``, no ``cover``
        kind = "tokens"

    call = SimpleNamespace(key_set=Cells())
    assert unmeasured(call, "attention_maps") == (
        "its keys are tokens, which cover no pixels: they have no labels and no place on the image"
    )
    assert unmeasured(call, "boundary_consistency") == "its keys are tokens, not pixels: no key lies on a boundary"
    assert unmeasured(call, "logit_gradients") is None
