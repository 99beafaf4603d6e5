"""Helpers shared by the test folders: a stand-in for a Lightning Trainer, tiny modules and fits."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from types import SimpleNamespace

import lightning as L
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dnlseg.context import VARIANTS, find_context_blocks
from dnlseg.data import SyntheticDataModule
from dnlseg.data.synthetic import CLASS_NAMES
from dnlseg.models import SegmentationModule


def context_of(name: str | None) -> Callable[[int], nn.Module] | None:
    """The ``context`` argument of a network for the variant ``name`` of ``dnlseg.context.VARIANTS``; None: baseline."""
    return None if name is None or VARIANTS[name].block is None else VARIANTS[name].build


class RecordingLogger:
    """Collects ``log_metrics`` calls: ``{step: {tag: value}}``."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.setdefault(step, {}).update(metrics)


def fake_trainer(global_step: int = 0, global_rank: int = 0, **attributes) -> SimpleNamespace:
    """What the callbacks read from a Trainer, without running one: step, rank, loggers, precision context."""
    defaults = dict(
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
    """A resnet18 (up to layer2) + 16-channel head module with fixed initial weights; no Trainer attached.

    The context block's zero-initialised ``out_norm`` is set to ones, so that the loss depends on the attention
    (at initialisation the block is the identity and every attention gradient is 0).
    """
    torch.manual_seed(0)
    defaults = dict(encoder_name="resnet18", encoder_depth=3, head_channels=16, aux_channels=8, context=context)
    module = SegmentationModule(num_classes=num_classes, **{**defaults, **kwargs})
    for block in find_context_blocks(module).values():
        torch.nn.init.ones_(block.out_norm.weight)
    return module


def tiny_batch(n: int = 2, size: int = 32, num_classes: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(n, 3, size, size, generator=generator),
        "mask": torch.randint(0, num_classes, (n, size, size), generator=generator),
    }


def _fit_on_synthetic(tmp_path, context, callbacks, num_val, module_kwargs, **trainer_kwargs) -> L.Trainer:
    """Seeded fit of a resnet18 + 16-channel head with the ``context`` variant on 64 px synthetic images."""
    L.seed_everything(0, workers=True)
    data = SyntheticDataModule(num_train=8, num_val=num_val, image_size=64, batch_size=2, seed=0)
    model = SegmentationModule(
        num_classes=data.num_classes,
        encoder_name="resnet18",
        head_channels=16,
        aux_channels=8,
        context=context_of(context),
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


# CLI overrides that shrink a synthetic recipe to a seconds-long fit (64 px images, narrow heads).
TINY = [
    "--trainer.max_steps=4",
    "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1",
    "--trainer.enable_progress_bar=false",
    "--model.head_channels=16",
    "--model.aux_channels=8",
    "--data.init_args.num_train=16",
    "--data.init_args.num_val=4",
    "--data.init_args.image_size=64",
    "--data.init_args.batch_size=2",
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
