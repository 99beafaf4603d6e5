"""Helpers shared by the test folders: a stand-in for a Lightning Trainer, tiny modules and fits."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dnlseg.context import VARIANTS, CrissCrossAttention2d, find_context_blocks
from dnlseg.data import LoaderOptions, SyntheticDataModule
from dnlseg.data.synthetic import CLASS_NAMES, SYNTHETIC_LOADER
from dnlseg.models import SegmentationModule
from dnlseg.models.encoder import EncoderOptions
from dnlseg.models.heads import ANNHead, DAHead, EMAHead, ISAHead, OCRHead
from dnlseg.models.network import NetworkOptions


def context_of(name: str | None) -> Callable[[int], nn.Module] | None:
    """The ``context`` argument of a network for the variant ``name`` of ``dnlseg.context.VARIANTS``; None: baseline."""
    return None if name is None or VARIANTS[name].block is None else VARIANTS[name].build


# ResNet-18 up to layer2 (stride 8): the encoder of the tiny test networks
TINY_ENCODER = EncoderOptions(name="resnet18", depth=3)


def tiny_network(context: Callable[[int], nn.Module] | None = None, **changes) -> NetworkOptions:
    """``model.network`` of the tiny test networks: ``TINY_ENCODER``, 16-channel head, 8-channel aux head, the
    ``context`` block; ``changes`` replace fields (``encoder=EncoderOptions(...)``, ``aux_channels=0``)."""
    defaults = dict(encoder=TINY_ENCODER, head_channels=16, aux_channels=8, context=context)
    return NetworkOptions(**{**defaults, **changes})


class RecordingLogger:
    """Collects ``log_metrics`` calls: ``{step: {tag: value}}``."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.setdefault(step, {}).update(metrics)


def fake_trainer(global_step: int = 0, global_rank: int = 0, **attributes) -> SimpleNamespace:
    """What the callbacks read from a Trainer, without running one: step, rank, loggers, precision context; a fit."""
    defaults = dict(
        state=SimpleNamespace(fn="fit"),
        global_step=global_step,
        global_rank=global_rank,
        is_global_zero=global_rank == 0,
        loggers=[RecordingLogger()],
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
        sanity_checking=False,
        datamodule=None,
    )
    return SimpleNamespace(**{**defaults, **attributes})


def tiny_module(context=None, num_classes: int = 3, **kwargs) -> SegmentationModule:
    """A ``tiny_network`` module with fixed initial weights; no Trainer attached. ``kwargs``: the module's other
    arguments (``loss=LossOptions(aux_weight=0)`` ...).

    The context block's zero-initialised ``out_norm`` is set to ones, so that the loss depends on the attention
    (at initialisation the block is the identity and every attention gradient is 0).
    """
    torch.manual_seed(0)
    module = SegmentationModule(num_classes=num_classes, **{"network": tiny_network(context), **kwargs})
    for block in find_context_blocks(module).values():
        torch.nn.init.ones_(block.out_norm.weight)
    return module


def synthetic_loader(**changes) -> LoaderOptions:
    """The synthetic DataModule's loader options with ``changes`` (e.g. ``batch_size=2``): batches of one size for
    training and evaluation, loaded in the main process."""
    return dataclasses.replace(SYNTHETIC_LOADER, **changes)


def tiny_batch(n: int = 2, size: int = 32, num_classes: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, size, size, generator=generator),
        "mask": torch.randint(0, num_classes, (n, size, size), generator=generator),
    }


def _fit_on_synthetic(tmp_path, context, callbacks, num_val, module_kwargs, **trainer_kwargs) -> L.Trainer:
    """Seeded fit of a resnet18 + 16-channel head with the ``context`` variant on 64 px synthetic images."""
    L.seed_everything(0, workers=True)
    data = SyntheticDataModule(
        num_train=8, num_val=num_val, image_size=64, loader=synthetic_loader(batch_size=2), seed=0
    )
    model = SegmentationModule(
        num_classes=data.num_classes,
        network=tiny_network(context_of(context), encoder=EncoderOptions(name="resnet18")),
        **module_kwargs,
    )
    trainer = L.Trainer(
        logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name=context or "baseline"),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        deterministic=True,
        accelerator="cpu",
        **trainer_kwargs,
    )
    trainer.fit(model, data)
    return trainer


def tiny_fit(tmp_path, context="dnl", callbacks=(), max_steps=4, **trainer_kwargs) -> L.Trainer:
    """Fit a resnet18 + context head for a few steps on 64 px synthetic images; returns the trainer."""
    module_kwargs = {"class_names": list(CLASS_NAMES)}
    return _fit_on_synthetic(
        tmp_path, context, callbacks, 2, module_kwargs, max_steps=max_steps, limit_val_batches=0, log_every_n_steps=1,
        **trainer_kwargs,
    )  # fmt: skip


def fit_with_validation(tmp_path, context, callbacks) -> L.Trainer:
    """Two training steps of the ``context`` variant (``dnlseg.context.VARIANTS``) on 64 px images, then validation."""
    return _fit_on_synthetic(
        tmp_path, context, callbacks, 4, {}, max_steps=2, val_check_interval=2, num_sanity_val_steps=1
    )


def final_weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.lightning_module.state_dict().items()}


def image_tags(log_dir: Path) -> dict[str, list[int]]:
    """{tag: steps} of the images in the TensorBoard event files below ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: dict[str, list[int]] = {}
    for event_file in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            tags.setdefault(tag, []).extend(e.step for e in accumulator.Images(tag))
    return tags


def backward_nodes(tensor: torch.Tensor) -> set[str]:
    """The names of the autograd nodes ``tensor`` was computed through (e.g. "GramBackward", "AddmmBackward0")."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def captured_from_logits(pairwise, unary, query_size, key_size, combine=None):
    """A ``CapturedAttention`` whose logits are the given ones: p (N, P, Pk) as the factors (p, I), since
    p_ij = p_i . e_j; u (N, 1, Pk) as it is. Values and output are placeholders (zeros)."""
    from dnlseg.context import CapturedAttention

    N, Pk = (
        unary.shape[0] if unary is not None else pairwise.shape[0],
        (unary if unary is not None else pairwise).shape[-1],
    )
    key = torch.eye(Pk, dtype=pairwise.dtype).expand(N, Pk, Pk) if pairwise is not None else None
    zeros = torch.zeros(N, Pk, 1)
    return CapturedAttention(pairwise, key, unary, zeros, zeros, tuple(query_size), tuple(key_size), combine)


class TensorSizes(TorchFunctionMode):
    """``with TensorSizes() as sizes:`` records the number of elements of every tensor a torch function returns."""

    def __enter__(self):
        super().__enter__()
        self.sizes: list[int] = []
        return self.sizes

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.sizes.extend(t.numel() for t in (out if isinstance(out, (tuple, list)) else (out,)) if torch.is_tensor(t))
        return out


# What torch 2.14 raises when the CPU allocator fails, as it is (a test raises it rather than exhaust the memory).
CPU_OUT_OF_MEMORY = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "35184372088832 bytes. Error code 12 (Cannot allocate memory)"
)

# CLI overrides that shrink a synthetic recipe to a seconds-long fit (64 px images, narrow heads).
TINY = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--model.network.head_channels=16",
    "--model.network.aux_channels=8",
    "--data.init_args.num_train=16",
    "--data.init_args.num_val=4",
    "--data.init_args.image_size=64",
    "--data.init_args.loader.batch_size=2",
]


class TwoRanks:
    """Two DDP "ranks" as two threads of this process: ``all_reduce`` waits for both and returns the sum.

    The sum keeps both ranks' autograd graphs, so one backward of (loss_0 + loss_1) gives each rank the
    gradient the real differentiable all-reduce would (its backward sums the ranks' upstream gradients).
    """

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2)
        self.slots: list = [None, None]
        self.calls = [0, 0]
        self.local = threading.local()

    def all_reduce(self, tensor, group=None):
        rank = self.local.rank
        self.calls[rank] += 1
        self.slots[rank] = tensor
        self.barrier.wait()
        total = self.slots[0] + self.slots[1]
        self.barrier.wait()  # both have read the slots before the next call overwrites them
        return total

    def run(self, function, inputs):
        outputs, errors = [None, None], []

        def body(rank):
            self.local.rank = rank
            try:
                outputs[rank] = function(rank, inputs[rank])
            except BaseException as error:  # noqa: BLE001 - re-raised below
                errors.append(error)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(rank,)) for rank in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if errors:
            raise errors[0]
        return outputs


def wake_context_blocks(module: nn.Module, seed: int = 1) -> nn.Module:
    """Give every zero-initialised parameter of the context blocks in ``module`` random values (the output norm, GC's
    last conv, gamma), so that the attention changes the logits: a block that starts as the identity would let a
    wrong attention go unseen. Returns ``module``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in find_context_blocks(module).values():
            for param in block.parameters():
                if not param.any():
                    param.copy_(0.5 + torch.rand(param.shape, generator=generator))
    return module


# The heads of the field beyond VARIANTS at a tiny width: model.network changes (a decode head of its own layout, or
# CCNet's block in the context head), keyed as the synthetic recipes (configs/synthetic/<name>.yaml).
TINY_HEADS: dict[str, dict] = {
    "danet": {"decode_head": functools.partial(DAHead, pam_reduction=4)},
    "ccnet": {"context": functools.partial(CrissCrossAttention2d, reduction=4)},
    "annnet": {"decode_head": functools.partial(ANNHead, pool_scales=(1, 2))},
    "isanet": {"decode_head": functools.partial(ISAHead, group_size=(2, 2))},
    "emanet": {"decode_head": functools.partial(EMAHead, num_bases=4)},
    "ocrnet": {"decode_head": OCRHead},
}


def tiny_head_network(name: str, **changes) -> NetworkOptions:
    """``tiny_network`` with the head ``name``: a ``dnlseg.context.VARIANTS`` entry or a ``TINY_HEADS`` one."""
    head = TINY_HEADS[name] if name in TINY_HEADS else {"context": context_of(name)}
    return tiny_network(**{**head, **changes})


def tiny_segmenter(variant: str, num_classes: int = 5):
    """A ``dnlseg.deploy.ImageSegmenter`` (uint8 images -> logits) over a resnet18 (up to layer2) + 16-channel head
    ``variant`` (``tiny_head_network``), its blocks woken (``wake_context_blocks``), in eval mode."""
    from dnlseg.data import IMAGENET_MEAN, IMAGENET_STD
    from dnlseg.deploy import ImageSegmenter

    torch.manual_seed(0)
    module = SegmentationModule(num_classes, network=tiny_head_network(variant))
    wake_context_blocks(module)
    return ImageSegmenter(module.network, IMAGENET_MEAN, IMAGENET_STD).eval()


def uint8_images(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images of ``shape`` (N, 3, H, W)."""
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


class TinyRegression(L.LightningModule):
    """A one-weight LightningModule for tests of the fit's lifecycle (steps, validations, checkpoints).

    Each training batch is one random vector; each validation logs ``val/mIoU`` = the global step / 1000 (a score
    that tells which step it was computed at) and counts the validations in ``validated_at``.
    """

    def __init__(self, num_train: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3))
        self.num_train = num_train
        self.validated_at: list[int] = []

    def training_step(self, batch, batch_idx):
        return ((self.weight - batch) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/mIoU", self.global_step / 1000)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated_at.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(self.num_train, 3, generator=torch.Generator().manual_seed(0)))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(1, 3))


def saved_lightning_checkpoint(path) -> Path:
    """A real Lightning checkpoint (weights, optimiser, loops, callbacks) of a 1-step tiny fit, saved at ``path``
    through dnlseg's ``AtomicCheckpointIO``."""
    from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO

    path = Path(path)
    trainer = tiny_fit(path.parent, max_steps=1, plugins=[AtomicCheckpointIO()])
    trainer.save_checkpoint(path)
    return path


def damage(source: Path, target: Path, offset: int, size: int = 1024) -> Path:
    """``target``: a copy of ``source`` with ``size`` bytes from ``offset`` on changed (each XOR 0x5A): a 1 KB
    stretch of a file overwritten in place, the file as long as before."""
    data = bytearray(source.read_bytes())
    data[offset : offset + size] = bytes(b ^ 0x5A for b in data[offset : offset + size])
    target.write_bytes(bytes(data))
    return target


def damage_points(path: Path) -> dict[str, int]:
    """Offsets (1 KB before the end of what they name) in a ``torch.save`` zip file: inside the pickle, in the
    middle of the bytes of its largest tensor, in the zip index (central directory) at the end."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        records = archive.infolist()

        def data_start(info: zipfile.ZipInfo) -> int:  # local header (30 bytes), file name, extra field, data
            f.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", f.read(4))
            return info.header_offset + 30 + name_length + extra_length

        pickle = next(info for info in records if info.filename.endswith("/data.pkl"))
        tensor = max((info for info in records if "/data/" in info.filename), key=lambda info: info.file_size)
        return {
            "pickle": data_start(pickle) + max(0, pickle.file_size // 2 - 512),
            "tensor data": data_start(tensor) + tensor.file_size // 2,
            "zip index": archive.start_dir,
        }


WARNING_LINE = re.compile(
    r"^\S+\.py:\d+: "  # warnings.warn's format, and Lightning's (rank_zero_warn: the category left out)
    r"|\b\w*Warning\b"  # UserWarning, PossibleUserWarning, FutureWarning, ...; torch's C++ "[W...] Warning:"
    r"|\bwarn(ing)?s?\.warn\("  # the source line Python prints under a warning
)


def warning_lines(output: str) -> list[str]:
    """The lines of a command's output that are warnings (``WARNING_LINE``); progress-bar redraws split apart."""
    lines = output.replace("\r", "\n").splitlines()
    return [line for line in lines if WARNING_LINE.search(line)]
