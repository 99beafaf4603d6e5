"""preflight: the accelerator a config asks for exists and can run its precision (GPUs faked); a checkpoint file
is complete and intact before anything is built."""

import pytest
import torch

from dnlseg.checkpoints.weight_files import NO_VERIFY_ENV
from dnlseg.cli.preflight import check_checkpoint_file, check_hardware, check_sync_batchnorm
from dnlseg.errors import ChecksumMismatchError, ConfigError
from tests.helpers import damage, damage_points


def config(**trainer):
    return {"trainer": trainer}


@pytest.fixture
def gpus(monkeypatch):
    """A machine with ``count`` CUDA GPUs named "Tesla V100" (bf16: ``bf16``)."""

    def fake(count=1, bf16=False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Tesla V100")

    return fake


@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_gpu_config_on_a_machine_without_one_names_the_fix(gpus, accelerator):
    gpus(count=0)
    with pytest.raises(ConfigError, match=f"trainer.accelerator={accelerator} but no CUDA GPU is visible"):
        check_hardware(config(accelerator=accelerator))


def test_more_devices_than_gpus_is_refused(gpus):
    gpus(count=2)
    check_hardware(config(accelerator="gpu", devices=2))
    with pytest.raises(ConfigError, match=r"trainer.devices=4 but only 2 CUDA GPU\(s\) are visible"):
        check_hardware(config(accelerator="gpu", devices=4))
    check_hardware(config(accelerator="gpu", devices="auto"))  # not a count: Lightning decides


@pytest.mark.parametrize("accelerator", ["gpu", "auto"])
def test_bf16_on_a_gpu_without_bfloat16_names_the_card(gpus, accelerator):
    gpus(count=1, bf16=False)
    with pytest.raises(ConfigError, match="bf16-mixed needs a GPU with bfloat16 support .*Tesla V100 has none"):
        check_hardware(config(accelerator=accelerator, precision="bf16-mixed"))
    check_hardware(config(accelerator=accelerator, precision="16-mixed"))
    gpus(count=1, bf16=True)
    check_hardware(config(accelerator=accelerator, precision="bf16-mixed"))


def test_fp16_needs_a_gpu_and_auto_without_one_is_the_cpu(gpus):
    gpus(count=0)
    for accelerator in ("cpu", "auto"):
        with pytest.raises(ConfigError, match="trainer.precision=16-mixed cannot run on the CPU"):
            check_hardware(config(accelerator=accelerator, precision="16-mixed"))
        check_hardware(config(accelerator=accelerator, precision="bf16-mixed"))
    check_hardware(config())  # defaults: auto, 32-true
    gpus(count=1)
    check_hardware(config(accelerator="auto", precision="16-mixed"))
    with pytest.raises(ConfigError, match="cannot run on the CPU"):
        check_hardware(config(accelerator="cpu", precision="16-mixed"))  # a GPU present, the CPU asked for


def test_an_accelerator_object_is_left_to_lightning(gpus):
    gpus(count=0)
    check_hardware(config(accelerator=object(), precision="16-mixed"))


@pytest.mark.parametrize("where", ["pickle", "tensor data"])
def test_a_damaged_checkpoint_fails_the_early_check_in_one_line_unless_no_verify(
    lightning_checkpoint, tmp_path, monkeypatch, where
):
    check_checkpoint_file(str(lightning_checkpoint))
    damaged = damage(lightning_checkpoint, tmp_path / "last.ckpt", damage_points(lightning_checkpoint)[where])
    with pytest.raises(ChecksumMismatchError) as error:
        check_checkpoint_file(str(damaged), "ckpt_path (last)")
    assert str(error.value).startswith(f"ckpt_path (last)={damaged}: the file is damaged, record archive/")
    assert "\n" not in str(error.value)
    monkeypatch.setenv(NO_VERIFY_ENV, "1")
    check_checkpoint_file(str(damaged), "ckpt_path (last)")


PLUGIN = "dnlseg.models.sync_batchnorm.SyncBatchNormPlugin"
SYNC_BN_FIX = "add --trainer.plugins+=dnlseg.models.sync_batchnorm.SyncBatchNormPlugin (SyncBatchNorm with a CPU path)"


def test_sync_batchnorm_with_several_cpu_processes_needs_dnlsegs_plugin(gpus):
    gpus(count=0)
    own_data = {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "sync_batchnorm": True}
    with pytest.raises(ConfigError) as error:
        check_sync_batchnorm(config(**own_data))
    assert str(error.value).startswith("trainer.sync_batchnorm=true with 2 CPU processes (trainer.accelerator=cpu")
    assert SYNC_BN_FIX in str(error.value)
    with pytest.raises(ConfigError, match="with 2 CPU processes"):
        check_sync_batchnorm(config(**{**own_data, "accelerator": "auto"}))  # auto without a GPU: the CPU
    plugin = {"class_path": "dnlseg.models.sync_batchnorm.SyncBatchNormPlugin"}
    check_sync_batchnorm(
        config(**own_data, plugins=[{"class_path": "dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO"}, plugin])
    )
    check_sync_batchnorm(config(**own_data, plugins="dnlseg.models.sync_batchnorm.SyncBatchNormPlugin"))
    check_sync_batchnorm(config(**{**own_data, "sync_batchnorm": False}))
    check_sync_batchnorm(config(**{**own_data, "devices": 1, "strategy": "auto"}))  # one process: nothing to sync
    gpus(count=2)
    check_sync_batchnorm(config(**{**own_data, "accelerator": "gpu"}))


def test_the_own_data_recipe_on_two_cpu_processes_fails_before_anything_is_built(image_mask_root, monkeypatch):
    from dnlseg.cli.lightning_cli import run_cli
    from tests.recipes import ROOT

    built = []
    monkeypatch.setattr("dnlseg.cli.lightning_cli.DnlsegCLI.instantiate_classes", lambda self: built.append(self))
    args = [
        "-c",
        str(ROOT / "configs/own_data/dnl_r50_d8_512x512_40k.yaml"),
        f"--data.init_args.root={image_mask_root}",
    ]
    with pytest.raises(ConfigError, match=r"trainer.sync_batchnorm=true with 2 CPU processes") as error:
        run_cli([*args, "--trainer.accelerator=cpu", "--trainer.devices=2"], run=False)
    assert SYNC_BN_FIX in str(error.value) and built == []
    run_cli([*args, "--trainer.accelerator=cpu", "--trainer.devices=2", f"--trainer.plugins+={PLUGIN}"], run=False)
    assert len(built) == 1  # the fix it names is accepted
