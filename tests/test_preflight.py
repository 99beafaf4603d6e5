"""preflight.check_hardware: the accelerator a config asks for exists and can run its precision (GPUs faked)."""

import pytest
import torch

from dnlseg.preflight import ConfigError, check_hardware


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
