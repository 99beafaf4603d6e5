"""The base of every callback that analyses attention: the capture's bookkeeping once, each analysis its own measure.

An analysis gets the attention of a batch as each context block's ``CapturedAttention`` (``dnlseg.context``: O(P)
factors of the block's first call of the batch) in one of two ways:

* **During the validation loop's own forward** (``capture_validation = True``; ``AttentionConsistency``): a capture
  opens at the start of every validation batch ``capture_batch`` accepts and closes at its end, which hands
  ``{block: CapturedAttention}`` to ``measure_batch``. ``begin_validation`` decides at each validation's start
  whether to measure it (default: not the sanity check, and the model has blocks), ``end_validation`` reduces and
  logs. A capture left open (an exception, an epoch cut short) is closed at the next epoch start or end, at
  ``on_exception`` and at ``teardown``: no block keeps a sink.
* **In an extra forward of its own** (``AttentionMapLogger``, ``SeparationProbe``): ``captured_forward`` runs one
  forward inside the precision context and a capture, within ``leave_no_trace``, which restores what the forward
  would change: eval mode without a graph (``grad=False``), or a training-mode forward with gradients whose RNG
  draws and BatchNorm statistics leave no trace (``grad=True``).

What a block has is read from its capture, never from its class: ``pairwise_query``, ``unary_logits`` and
``combine`` are None where the block has no such term or its weights are no function of them. What has no meaning
for a block is read from the block (``ContextBlock.undefined_analyses``: CAM's keys are channels, EMA's attention
carries no gradient): ``skipped`` names those blocks and logs the reason once, so that an absent number is never a
silent gap; ``unmeasured`` says which analyses cannot run on a call's keys (keys that cover no pixels, such as CAM's
channels, have no labels and no map; keys that are not pixels lie on no boundary). Each reason is kept in
``not_computed`` ({(block, analysis): reason}), which ``dnlseg analyze`` writes into its report.

A subclass names the module protocols it needs in ``requires`` (``dnlseg.callbacks.module_interface``; checked at
``setup``), the files its last run wrote in ``written``, and how ``dnlseg analyze`` runs it on a checkpoint in
``analyze_arguments`` (None, the default: it measures training, and analyze leaves it out).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import lightning as L
import torch
from torch import nn

from dnlseg.callbacks.module_interface import check_module
from dnlseg.context import ANALYSES, CapturedAttention, capture_attention, find_context_blocks
from dnlseg.models.buffers import BufferSnapshot

log = logging.getLogger(__name__)

T = TypeVar("T")
# the analyses that read labels or paint maps on the keys' pixels
ON_KEY_PIXELS = ("attention_maps", "category_consistency", "boundary_consistency")


def undefined_analyses(module: nn.Module, analysis: str) -> dict[str, str]:
    """{block: why ``analysis`` (one of ``dnlseg.context.ANALYSES``) has no meaning for it} for the context blocks
    of ``module`` that declare so (``ContextBlock.undefined_analyses``)."""
    if analysis not in ANALYSES:
        raise ValueError(f"analysis={analysis!r} is not one of {', '.join(map(repr, ANALYSES))}")
    blocks = find_context_blocks(module).items()
    return {name: block.undefined_analyses[analysis] for name, block in blocks if analysis in block.undefined_analyses}


def unmeasured(call: CapturedAttention, analysis: str) -> str | None:
    """Why ``analysis`` cannot be computed on this call's keys, or None. The analyses of ``ON_KEY_PIXELS`` read the
    keys' pixels: keys that are not pixels are measured through the pixels they cover (``keys.cover``: ANN's pyramid
    cells, OCR's class regions), so keys that cover none (CAM's channels) have no labels and no map, and no such key
    lies on a boundary."""
    keys = call.key_set
    if analysis not in ON_KEY_PIXELS or keys.kind != "tokens":
        return None
    what = getattr(keys, "what", "tokens")
    if analysis == "boundary_consistency":
        return f"its keys are {what}, not pixels: no key lies on a boundary"
    if getattr(keys, "cover", None) is None:
        return f"its keys are {what}, which cover no pixels: they have no labels and no place on the image"
    return None


def first_calls(captured: dict[str, list[CapturedAttention]]) -> dict[str, CapturedAttention]:
    """{block: its first captured call}, for the blocks that ran."""
    return {name: calls[0] for name, calls in captured.items() if calls}


class AttentionCaptureCallback(L.Callback):
    """Base of the attention analyses (module docstring): Lightning's hooks here, the analysis in the subclass.

    Subclasses set ``capture_validation`` and fill in ``measure_batch`` (and, as needed, ``begin_validation``,
    ``capture_batch``, ``end_validation``), or run ``captured_forward`` from a hook of their own.
    """

    #: capture the validation loop's forward of each batch and hand it to ``measure_batch``
    capture_validation: ClassVar[bool] = False
    #: protocols the LightningModule must satisfy (``dnlseg.callbacks.module_interface``), checked at ``setup``
    requires: ClassVar[tuple[type, ...]] = ()
    #: the ``dnlseg.context.ANALYSES`` this callback computes (``dnlseg analyze`` reports the blocks' reasons for
    #: the others)
    analyses: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._capture: ExitStack | None = None  # the open capture of the current validation batch
        self._captured: dict[str, list[CapturedAttention]] = {}  # what it has captured so far
        self._measuring = False  # whether the current validation is measured
        self.written: list[Path] = []  # files the last run wrote (figures), for ``dnlseg analyze``'s record
        # {(block, analysis): why it has no number or figure}, each logged once; ``dnlseg analyze`` reports them
        self.not_computed: dict[tuple[str, str], str] = {}

    @classmethod
    def analyze_arguments(cls, output_dir: Path) -> dict[str, Any] | None:
        """The arguments ``dnlseg analyze`` gives this analysis over the config's when it analyses a checkpoint,
        writing into ``output_dir``; None: a training-time measurement, left out of analyze."""
        return None

    # -- what a subclass fills in --------------------------------------------------------------------------------
    def begin_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """At each validation's start: whether to capture its batches (not the sanity check; a model with blocks)."""
        return not trainer.sanity_checking and bool(find_context_blocks(pl_module))

    def capture_batch(self, batch_idx: int, dataloader_idx: int) -> bool:
        """Whether to capture this validation batch (default: every one)."""
        return True

    def measure_batch(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        captured: dict[str, CapturedAttention],
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """What the analysis does with one captured validation batch: ``captured[block]`` is the block's first
        call of the batch."""

    def end_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """At each validation's end (every one, measured or not, the sanity check included): reduce and log."""

    # -- what is not measured ------------------------------------------------------------------------------------
    def skipped(self, module: nn.Module, analysis: str, calls: dict[str, CapturedAttention] | None = None) -> set[str]:
        """The blocks of ``module`` that ``analysis`` skips -- those for which it has no meaning
        (``undefined_analyses``) and, of ``calls``, those whose keys it cannot be computed on (``unmeasured``) -- each
        reason recorded (``explain``)."""
        reasons = undefined_analyses(module, analysis)
        for name, call in (calls or {}).items():
            reason = unmeasured(call, analysis)
            if reason is not None:
                reasons.setdefault(name, reason)
        for name, reason in reasons.items():
            self.explain(name, analysis, reason)
        return set(reasons)

    def explain(self, block: str, analysis: str, reason: str) -> None:
        """Record why ``analysis`` gives no number or figure for ``block`` (``not_computed``, which ``dnlseg analyze``
        writes into its report), logged once per block and analysis: an absent number is never a silent gap."""
        if (block, analysis) not in self.not_computed:
            self.not_computed[block, analysis] = reason
            log.info("%s: no %s for %s: %s", type(self).__name__, analysis, block, reason)

    # -- extra forwards ------------------------------------------------------------------------------------------
    @staticmethod
    @contextmanager
    def leave_no_trace(pl_module: L.LightningModule, *, grad: bool) -> Iterator[None]:
        """Run an analysis's own forward (and its backward) so that training continues as without it.

        ``grad=False``: in eval mode without a graph; the training mode is restored. ``grad=True``: in the module's
        own mode with gradients on, inside ``torch.random.fork_rng`` (the global RNG stream continues as without
        it); the buffers (BatchNorm running statistics) are restored on exit. Parameters and their ``.grad`` are
        never touched: take gradients with ``torch.autograd.grad``.
        """
        if not grad:
            was_training = pl_module.training
            pl_module.eval()
            try:
                with torch.no_grad():
                    yield
            finally:
                pl_module.train(was_training)
            return
        snapshot = BufferSnapshot(pl_module)
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                yield
        finally:
            snapshot.restore()

    @staticmethod
    def captured_forward(
        trainer: L.Trainer, pl_module: L.LightningModule, forward: Callable[[], T]
    ) -> tuple[T, dict[str, CapturedAttention]]:
        """``forward()`` once in the trainer's precision context with a capture open: (its result, {block: its
        first call}). Wrap it in ``leave_no_trace``."""
        with trainer.precision_plugin.forward_context(), capture_attention(pl_module, max_calls=1) as captured:
            result = forward()
        return result, first_calls(captured)

    # -- Lightning hooks -----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_module(self, pl_module, self.requires)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        self._measuring = self.capture_validation and self.begin_validation(trainer, pl_module)

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._close()
        if not (self._measuring and self.capture_batch(batch_idx, dataloader_idx)):
            return
        self._capture = ExitStack()
        self._captured = self._capture.enter_context(capture_attention(pl_module, max_calls=1))

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        captured, self._captured = self._captured, {}
        self._close()
        if captured:
            self.measure_batch(trainer, pl_module, first_calls(captured), batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        self.end_validation(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None
