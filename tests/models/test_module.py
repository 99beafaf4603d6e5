"""SegmentationModule: the poly learning-rate schedule against its formula, the loss terms of a training step."""

from types import SimpleNamespace

import pytest
import torch
from torch.optim import SGD

from tests.helpers import tiny_batch, tiny_module


def attach(module, **trainer):
    module._trainer = SimpleNamespace(**trainer)  # what configure_optimizers reads from the Trainer
    return module


@pytest.mark.parametrize("total", [1, 7, 20])
def test_default_schedule_is_poly_power_0_9_over_the_runs_optimizer_steps_stepped_every_iteration(total):
    # mmengine's PolyLR (docs/science.md 6.1): lr_t = lr_0 * (1 - t / T)^0.9 per iteration, T = the run's optimiser
    # steps - 1 (the last step trains at the floor, here the default eta_min = 0), then the floor.
    module = attach(tiny_module(), estimated_stepping_batches=total)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, SGD) and (group["momentum"], group["weight_decay"]) == (0.9, 5e-4)
    lrs = []
    for _ in range(total + 2):
        lrs.append(group["lr"])
        optimizer.step()
        scheduler.step()
    T = max(1, total - 1)
    expected = [0.01 * max(0.0, 1 - t / T) ** 0.9 for t in range(total + 2)]
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_a_run_without_a_step_estimate_still_gets_one_step():
    module = attach(tiny_module(), estimated_stepping_batches=0)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.total_iters == 1


def test_an_explicit_optimizer_and_scheduler_are_used_as_given():
    module = tiny_module(
        optimizer=lambda params: SGD(params, lr=0.5),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1),
    )
    config = attach(module, estimated_stepping_batches=100).configure_optimizers()
    assert config["optimizer"].param_groups[0]["lr"] == 0.5
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)


def test_training_loss_is_main_plus_aux_weight_times_aux():
    module, batch = tiny_module(aux_weight=0.4), tiny_batch()
    torch.manual_seed(0)
    losses = module.losses(batch)
    assert set(losses) == {"loss", "main_loss", "aux_loss"}
    torch.testing.assert_close(losses["loss"], losses["main_loss"] + 0.4 * losses["aux_loss"])
    assert losses["main_loss"].item() != pytest.approx(losses["aux_loss"].item())
    no_aux = tiny_module(aux_weight=0).losses(batch)
    assert set(no_aux) == {"loss", "main_loss"} and torch.equal(no_aux["loss"], no_aux["main_loss"])


def test_epoch_metrics_under_ddp_are_logged_exactly_and_without_lightnings_sync_dist_warning():
    import warnings

    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.trainer.connectors.logger_connector.result import warning_cache

    from dnlseg.data import SyntheticDataModule
    from dnlseg.evaluation.metrics import confusion_summary

    data = SyntheticDataModule(num_train=2, num_val=3, image_size=32, batch_size=2)
    module = tiny_module(num_classes=data.num_classes, class_names=data.class_names)
    summaries = []
    original = confusion_summary

    def recording(*args, **kwargs):  # what the module computed from the confusion matrix, before logging
        summary = original(*args, **kwargs)
        summaries.append(dict(summary))  # the module pops from the one it gets
        return summary

    warning_cache.clear()  # Lightning warns once per process
    try:
        with warnings.catch_warnings(record=True) as caught, pytest.MonkeyPatch.context() as patch:
            warnings.simplefilter("always")
            patch.setattr("dnlseg.models.module.confusion_summary", recording)
            trainer = L.Trainer(accelerator="cpu", devices=1, strategy="ddp", logger=False, enable_progress_bar=False)
            (metrics,) = trainer.validate(module, data, verbose=False)  # a process group of one: gloo, in this process
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert [str(w.message) for w in caught if "sync_dist" in str(w.message)] == []
    (summary,) = summaries
    assert metrics["val/mIoU"] == summary["mIoU"].float().item()  # bit for bit
    assert metrics["val/pixel_acc"] == summary["pixel_acc"].float().item()
