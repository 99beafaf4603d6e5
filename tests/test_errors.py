"""Every error class for a user's mistake derives from ``dnlseg.errors.UserError`` (one-line reports in the CLI);
failures of the machine (disk, memory) are named in one line too."""

import errno
import os

import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException

from dnlseg.errors import (
    CheckpointMismatchError,
    ChecksumMismatchError,
    ConfigError,
    CorruptFileError,
    DatasetLayoutError,
    NonFiniteLossError,
    UsageError,
    UserError,
    machine_failure,
    yaml_problem,
)
from tests.helpers import CPU_OUT_OF_MEMORY


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (ConfigError, ValueError),
        (CheckpointMismatchError, ValueError),
        (DatasetLayoutError, ValueError),
        (CorruptFileError, RuntimeError),
        (NonFiniteLossError, FloatingPointError),
        (UsageError, ValueError),
        (ChecksumMismatchError, ValueError),
    ],
)
def test_user_errors_share_the_base_class_and_keep_their_builtin(error, builtin):
    assert issubclass(error, UserError) and issubclass(error, builtin)


CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.10 GiB of which 3.94 MiB is "
    "free. Including non-PyTorch memory, this process has 79.09 GiB memory in use."
)


def wrapped(error: BaseException) -> BaseException:
    """``error`` as Lightning or jsonargparse hand it on: the cause of another exception."""
    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("while running the fit loop") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "subcommand", "message"),
    [
        (
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/dnl/version_0/checkpoints/last.ckpt"),
            "fit",
            "/runs/dnl/version_0/checkpoints/last.ckpt: no space left on device (ENOSPC); free space on that "
            "filesystem, or write elsewhere (--trainer.logger.init_args.save_dir=DIR); the files written before are "
            "intact (last.ckpt included: a checkpoint is replaced only once its new version is complete)",
        ),
        (
            OSError(errno.EROFS, os.strerror(errno.EROFS), "/runs/dnl/version_0"),
            "fit",
            "/runs/dnl/version_0: read-only file system (EROFS); write elsewhere "
            "(--trainer.logger.init_args.save_dir=DIR)",
        ),
        (
            OSError(errno.EROFS, os.strerror(errno.EROFS), "/runs/dnl/version_0/eval/last/validate-0"),
            "validate",
            "/runs/dnl/version_0/eval/last/validate-0: read-only file system (EROFS); write elsewhere "
            "(--output_dir=DIR)",
        ),
        (
            PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/x.png"),
            "fit",
            "/data/x.png: permission denied (EACCES); check the permissions of that path, or write elsewhere "
            "(--trainer.logger.init_args.save_dir=DIR)",
        ),
        (
            RuntimeError(CPU_OUT_OF_MEMORY),
            "fit",
            "out of memory on the CPU (tried to allocate 32768.0 GiB) in fit: use a smaller "
            "--data.init_args.loader.batch_size or crop (--data.init_args.augmentation.crop_size; synthetic data: "
            "--data.init_args.image_size)",
        ),
        (
            torch.OutOfMemoryError(CUDA_OOM),
            "validate",
            "out of memory on the GPU (tried to allocate 20.00 MiB) in validate: evaluate in sliding windows "
            "(--model.inference.mode=slide), with fewer --model.inference.scales, --model.inference.flip=false, or "
            "--data.init_args.loader.batch_size=1",
        ),
        (
            MisconfigurationException("`max_steps` must be a non-negative integer or -1 (infinite steps)."),
            "fit",
            "trainer: `max_steps` must be a non-negative integer or -1 (infinite steps).",
        ),
    ],
    ids=["enospc", "erofs-fit", "erofs-evaluation", "eacces", "cpu-oom", "cuda-oom", "lightning-setting"],
)
def test_a_failure_of_the_machine_is_one_line_naming_the_path_and_what_to_do(error, subcommand, message):
    assert machine_failure(error, subcommand) == message
    assert machine_failure(wrapped(error), subcommand) == message  # however deep Lightning raised it


def test_anything_else_is_not_a_machine_failure():
    assert machine_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "fit") is None
    assert machine_failure(KeyError("a bug"), "fit") is None
    assert machine_failure(FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), "fit") is None


def test_a_yaml_error_is_one_line_with_its_line_and_column():
    import yaml

    with pytest.raises(yaml.YAMLError) as error:
        yaml.safe_load("- name: [a, b\n")
    assert yaml_problem(error.value) == (
        "while parsing a flow sequence: expected ',' or ']', but got '<stream end>' at line 2, column 1"
    )
