"""Checks of a parsed ``dnlseg`` config that fail before anything is built, naming the YAML key.

``check_config`` runs in the CLI after parsing and before any model, data or trainer is instantiated.
What the parser itself rejects (an unknown ``class_path``, a value outside a ``Literal``, a wrong type)
never gets here; what a typed ``__init__`` checks is its own check (a value it refuses is reported with its key:
``lightning_cli.constructor_error``), not repeated here. Here: what needs more than one key, the environment,
or the hardware.
"""

from __future__ import annotations

import importlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dnlseg.checkpoints.weight_files import verify_checksums
from dnlseg.errors import ConfigError

CPU_PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "bf16-true", "bf16")


def _get(namespace: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if namespace is None:
            return default
        namespace = namespace.get(part) if isinstance(namespace, dict) else getattr(namespace, part, None)
    return default if namespace is None else namespace


def _import(class_path: str) -> type | None:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def check_stride(name: str, value: int | Sequence[int], output_stride: int) -> None:
    """Each side a multiple of the output stride, or a multiple plus one (DeepLab's 513, mmseg's 769)."""
    for size in [value] if isinstance(value, int) else value:
        if size % output_stride not in (0, 1):
            down, up = size - size % output_stride, size - size % output_stride + output_stride
            raise ConfigError(
                f"{name}={value} does not fit model.network.encoder.output_stride={output_stride}: each side must be "
                f"a multiple of {output_stride} or a multiple plus one (e.g. {down} or {up}, {down + 1} or {up + 1})"
            )


def check_data(config: Any, subcommand: str | None = None) -> None:
    """Crop or image size against the output stride, ``loader.num_workers`` >= 0, the dataset root exists.

    ``predict`` with ``data.init_args.predict_dir`` reads only that folder: no dataset root is needed then.
    """
    data = _get(config, "data")
    args = _get(data, "init_args", {})
    output_stride = _get(config, "model.network.encoder.output_stride")
    crop = _get(args, "augmentation.crop_size")
    if output_stride and crop is not None:
        check_stride("data.init_args.augmentation.crop_size", list(crop), output_stride)
    image_size = _get(args, "image_size")
    if output_stride and image_size is not None:
        check_stride(
            "data.init_args.image_size", image_size if isinstance(image_size, int) else list(image_size), output_stride
        )
    num_workers = _get(args, "loader.num_workers")
    if num_workers is not None and num_workers < 0:
        raise ConfigError(f"data.init_args.loader.num_workers={num_workers} must be >= 0 (0: load in the main process)")
    predict_dir = _get(args, "predict_dir")
    if predict_dir is not None and subcommand == "predict":
        if not Path(predict_dir).expanduser().is_dir():
            raise ConfigError(f"data.init_args.predict_dir={predict_dir} does not exist or is not a directory")
        return
    cls = _import(_get(data, "class_path", ""))
    env_var = getattr(cls, "env_var", "") if cls is not None else ""
    if env_var or "root" in (vars(args) if hasattr(args, "__dict__") else args or {}):
        root = _get(args, "root")
        if root is None:
            if not env_var or not os.environ.get(env_var):
                raise ConfigError(
                    "data.init_args.root is not set"
                    + (f" and neither is ${env_var}" if env_var else "")
                    + ": give the dataset folder with --data.init_args.root=PATH"
                    + (f" or export {env_var}=PATH" if env_var else "")
                )
            key, root = f"${env_var}", os.environ[env_var]
        else:
            key = "data.init_args.root"
        if not Path(root).expanduser().is_dir():
            raise ConfigError(f"{key}={root} does not exist or is not a directory")


def check_hardware(config: Any) -> None:
    """The accelerator is present, and it can run ``trainer.precision``."""
    accelerator = _get(config, "trainer.accelerator", "auto")
    precision = str(_get(config, "trainer.precision", "32-true"))
    if not isinstance(accelerator, str):
        return  # an Accelerator object: Lightning checks it
    cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible on this machine "
            "(torch.cuda.is_available() is False): use --trainer.accelerator=cpu (and --trainer.strategy=auto "
            "--trainer.devices=1 or --trainer.sync_batchnorm=false for a recipe config)"
        )
    devices = _get(config, "trainer.devices")
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise ConfigError(f"trainer.devices={devices} but only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not cuda)
    if on_cpu and precision not in CPU_PRECISIONS:
        raise ConfigError(f"trainer.precision={precision} cannot run on the CPU: use 32-true or bf16-mixed")
    if not on_cpu and cuda and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"trainer.precision={precision} needs a GPU with bfloat16 support (Ampere or newer); "
            f"{torch.cuda.get_device_name()} has none: use 16-mixed or 32-true"
        )


def check_sync_batchnorm(config: Any) -> None:
    """``sync_batchnorm`` with several CPU processes needs ``dnlseg.models.sync_batchnorm.SyncBatchNormPlugin``:
    PyTorch's SyncBatchNorm has GPU kernels only, and DDP refuses it on the CPU (in every process, after the
    start-up)."""
    if not _get(config, "trainer.sync_batchnorm", False):
        return
    accelerator = _get(config, "trainer.accelerator", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    strategy = str(_get(config, "trainer.strategy", "auto"))
    devices, nodes = _get(config, "trainer.devices", 1), _get(config, "trainer.num_nodes", 1)
    processes = "ddp" in strategy or (isinstance(devices, int) and devices > 1) or nodes > 1
    if not (on_cpu and processes):
        return
    from dnlseg.models.sync_batchnorm import SyncBatchNormPlugin

    plugins = _get(config, "trainer.plugins") or []
    plugins = plugins if isinstance(plugins, list) else [plugins]
    paths = [p if isinstance(p, str) else _get(p, "class_path", "") for p in plugins]
    if any(isinstance(cls, type) and issubclass(cls, SyncBatchNormPlugin) for cls in map(_import, paths)):
        return
    raise ConfigError(
        f"trainer.sync_batchnorm=true with {devices} CPU processes (trainer.accelerator={accelerator}, "
        f"trainer.strategy={strategy}): PyTorch's SyncBatchNorm runs on GPUs only; add "
        "--trainer.plugins+=dnlseg.models.sync_batchnorm.SyncBatchNormPlugin (SyncBatchNorm with a CPU path), "
        "or --trainer.sync_batchnorm=false"
    )


def check_nonfinite_action(config: Any) -> None:
    """``skip`` needs one process: Lightning refuses a skipped ``training_step`` in distributed training."""
    if _get(config, "model.loss.on_nonfinite") != "skip":
        return
    strategy = str(_get(config, "trainer.strategy", "auto"))
    devices, nodes = _get(config, "trainer.devices", 1), _get(config, "trainer.num_nodes", 1)
    if "ddp" in strategy or "fsdp" in strategy or (isinstance(devices, int) and devices > 1) or nodes > 1:
        raise ConfigError(
            f"model.loss.on_nonfinite=skip needs a single process (trainer.strategy={strategy}, "
            f"trainer.devices={devices}, trainer.num_nodes={nodes}): Lightning cannot skip a step under DDP; "
            "use model.loss.on_nonfinite=stop"
        )


CHECKPOINT_KEYWORDS = ("last", "best", "hpc", "registry")  # Lightning's names for a checkpoint it finds itself
PICKLE_PROTOCOL_2 = b"\x80\x02"  # how a checkpoint in torch's legacy (pre-1.6, non-zip) format starts


def check_checkpoint_file(ckpt_path: str | None, key: str = "ckpt_path") -> None:
    """A checkpoint path that is a file: it exists, is a complete ``torch.save`` file and matches its checksums.

    A zip-format checkpoint (``torch.save`` since PyTorch 1.6) cut short loses its central directory, which is at
    the end of the file; one with bytes overwritten inside no longer matches the CRC-32 of its records
    (``weight_files.verify_checksums``; ``dnlseg --no_verify`` skips that). Files in the legacy pickle format pass
    as they are.
    """
    if ckpt_path is None or ckpt_path in CHECKPOINT_KEYWORDS or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={ckpt_path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(len(PICKLE_PROTOCOL_2))
    if head == PICKLE_PROTOCOL_2:
        return
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as error:
        raise ConfigError(
            f"{key}={ckpt_path}: not a complete PyTorch checkpoint ({path.stat().st_size} bytes, {error}); the file "
            "is truncated (an interrupted copy or download?) or of another format: expected a file written by "
            "torch.save / Lightning"
        ) from error
    verify_checksums(path, f"{key}={ckpt_path}")
    check_mmseg_head(path)


def check_mmseg_head(path: str | Path) -> None:
    """An mmseg model-zoo file of a decode head dnlseg does not read (PSANet, SegFormer, ...) is refused from its keys
    (``dnlseg.checkpoints.mmseg.check_supported_file``)."""
    from dnlseg.checkpoints.mmseg import check_supported_file  # imports Lightning: not at the command's start

    check_supported_file(path)


def check_init_weights(config: Any) -> None:
    """``model.init_weights``: an mmseg file of a head dnlseg does not read is refused before anything is built (a
    missing or damaged file is reported where it is read)."""
    path = _get(config, "model.init_weights")
    if path is not None and Path(path).expanduser().is_file():
        check_mmseg_head(Path(path).expanduser())


def check_config(config: Any, subcommand: str | None = None) -> None:
    """All checks above on the config of one subcommand; raise ``ConfigError`` naming the key."""
    check_data(config, subcommand)
    check_hardware(config)
    check_sync_batchnorm(config)
    check_nonfinite_action(config)
    check_init_weights(config)
