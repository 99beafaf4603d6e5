"""SegmentationModule: the poly learning-rate schedule against its formula, the loss terms of a training step."""

import functools
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim import SGD

from dnlseg.analysis.tensorboard_scalars import read_scalars
from dnlseg.models.heads import DAHead
from dnlseg.models.losses import LossOptions
from dnlseg.models.module import SegmentationModule
from tests.helpers import synthetic_loader, tiny_batch, tiny_module, tiny_network


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
    module, batch = tiny_module(loss=LossOptions(aux_weight=0.4)), tiny_batch()
    torch.manual_seed(0)
    losses = module.losses(batch)
    assert set(losses) == {"loss", "main_loss", "aux_loss"}
    torch.testing.assert_close(losses["loss"], losses["main_loss"] + 0.4 * losses["aux_loss"])
    assert losses["main_loss"].item() != pytest.approx(losses["aux_loss"].item())
    no_aux = tiny_module(loss=LossOptions(aux_weight=0)).losses(batch)
    assert set(no_aux) == {"loss", "main_loss"} and torch.equal(no_aux["loss"], no_aux["main_loss"])


class Batches(torch.utils.data.Dataset):
    """Two tiny (image, mask) samples."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        batch = tiny_batch(n=1, size=32, seed=index)
        return {"image": batch["image"][0], "mask": batch["mask"][0]}


def evaluation_trainer(log_dir, **kwargs) -> L.Trainer:
    return L.Trainer(
        logger=TensorBoardLogger(log_dir, name="", version=""), accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, **kwargs,
    )  # fmt: skip


def evaluate(stage: str, module, trainer: L.Trainer) -> None:
    getattr(trainer, stage)(module, dataloaders=torch.utils.data.DataLoader(Batches()), verbose=False)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_an_evaluation_logs_at_the_step_of_the_loaded_checkpoint_and_gives_the_loop_its_step_back(stage, tmp_path):
    module = tiny_module()
    module.on_load_checkpoint({"global_step": 800, "state_dict": module.state_dict()})
    assert (module.evaluated_step, module.weights_step_source) == (800, "global_step of the checkpoint")
    trainer = evaluation_trainer(tmp_path)
    # Lightning's logging step of an evaluation outside a fit, which ``log_at_evaluated_step`` lends the step to:
    assert hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped"), (
        "Lightning renamed fit_loop.epoch_loop._batches_that_stepped: evaluations would log at step 0 again; "
        "give SegmentationModule.log_at_evaluated_step the new name"
    )
    evaluate(stage, module, trainer)
    prefix = "val" if stage == "validate" else "test"
    assert read_scalars(tmp_path)[f"{prefix}/mIoU"][0].tolist() == [800]  # beside the training curve's step 800
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == 0  # given back


def test_an_evaluation_without_a_checkpoint_logs_at_step_0_and_says_why(tmp_path):
    module = tiny_module()
    assert module.evaluated_step == 0 and "no checkpoint loaded" in module.weights_step_source
    evaluate("validate", module, evaluation_trainer(tmp_path))
    assert read_scalars(tmp_path)["val/mIoU"][0].tolist() == [0]
    module.on_load_checkpoint({"state_dict": module.state_dict()})  # a file without global_step
    assert module.evaluated_step == 0 and "records no global_step" in module.weights_step_source


def test_during_a_fit_the_evaluated_step_is_the_trainers():
    module = tiny_module()
    module.on_load_checkpoint({"global_step": 800, "state_dict": module.state_dict()})  # a resumed fit
    module.trainer = SimpleNamespace(state=SimpleNamespace(fn="fit"), global_step=803)
    assert module.evaluated_step == 803
    module.trainer = SimpleNamespace(state=SimpleNamespace(fn="validate"), global_step=0)
    assert module.evaluated_step == 800


def test_an_evaluation_after_a_fit_in_the_same_process_logs_at_the_step_the_fit_ended(tmp_path):
    module = tiny_module()
    trainer = evaluation_trainer(tmp_path, max_steps=3)
    trainer.fit(module, torch.utils.data.DataLoader(Batches(), batch_size=1))  # no validation in the fit
    evaluate("validate", module, trainer)
    assert read_scalars(tmp_path)["val/mIoU"][0].tolist() == [3]
    assert module.weights_step_source == "global_step at the end of the fit that trained the weights"


def test_epoch_metrics_under_ddp_are_logged_exactly_and_without_lightnings_sync_dist_warning():
    import warnings

    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.trainer.connectors.logger_connector.result import warning_cache

    from dnlseg.data import SyntheticDataModule
    from dnlseg.evaluation.metrics import confusion_summary

    data = SyntheticDataModule(num_train=2, num_val=3, image_size=32, loader=synthetic_loader(batch_size=2))
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


def test_a_module_built_in_python_records_its_option_groups_as_plain_values_a_safe_load_reads():
    import io
    from functools import partial

    from dnlseg.context import DisentangledNonLocal2d

    module = tiny_module(partial(DisentangledNonLocal2d, reduction=2), loss=LossOptions(aux_weight=0.3))
    buffer = io.BytesIO()
    torch.save(dict(module.hparams), buffer)  # what a checkpoint's "hyper_parameters" holds
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # no pickled dataclass or callable in it
    assert saved["network"]["encoder"] == {"name": "resnet18", "weights": None, "depth": 3, "output_stride": 8}
    assert saved["network"]["head_channels"] == 16 and "DisentangledNonLocal2d" in saved["network"]["context"]
    assert saved["loss"] == {
        "aux_weight": 0.3,
        "ohem_threshold": None,
        "ohem_min_kept": 100_000,
        "normalization": "labelled",
        "on_nonfinite": "stop",
    }
    assert saved["runtime"] == {"channels_last": False, "compile": False} and saved["inference"] is None


def test_danets_branch_losses_enter_the_total_with_the_heads_weight():
    torch.manual_seed(0)
    network = tiny_network(decode_head=functools.partial(DAHead, side_loss_weight=0.3))
    module = SegmentationModule(num_classes=3, network=network, loss=LossOptions(aux_weight=0.4))
    losses = module.losses(tiny_batch())
    assert set(losses) == {"loss", "main_loss", "aux_loss", "pam_loss", "cam_loss"}
    expected = losses["main_loss"] + 0.4 * losses["aux_loss"] + 0.3 * (losses["pam_loss"] + losses["cam_loss"])
    torch.testing.assert_close(losses["loss"], expected)
    assert len({round(v.item(), 6) for v in losses.values()}) == 5  # five different terms
