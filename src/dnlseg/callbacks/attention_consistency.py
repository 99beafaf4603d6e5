"""Over the validation set, how much the pairwise term attends to the query's own class and the unary term to
boundaries: ``val/pairwise_category_consistency`` and ``val/unary_boundary_consistency``.

Definitions (``dnlseg.analysis.attention_consistency``; 1 = no better than chance):

    pairwise-category = mean over labelled queries i of
        ( sum_{j : label_j = label_i} softmax_j(p_ij) ) / ( #{j : label_j = label_i} / Pk )
    unary-boundary    = mean over images of
        ( sum_{j in band} softmax_j(u_j) ) / ( #band / Pk ),   band = key cells within ``radius`` of a label change

For NL, p and u are its implicit decomposition ``p_ij + u_j``. No extra network forward: the normal validation
forward runs inside ``capture_attention``, which hands over the factors of each block's FIRST call of the batch
(with whole-image inference the first scale, unflipped, whose grid the labels are resized to, nearest). The metrics
are computed from the factors in O(P) memory -- ``num_queries`` sampled rows of p, or every labelled query through
the fused kernel with one-hot label values -- so whole 1024x2048 images (P = 32768) are measured as they are.
Sliding-window inference is not supported (a window's position is not known to the block): the callback warns once
and logs nothing.

Logged per block ``val/<metric>/<block>`` and, for the first block, the plain ``val/<metric>``. Blocks without
a pairwise (unary-only) or unary (pairwise-only) term log only what exists; a network without a block logs
nothing; a metric without meaning for a block (``ContextBlock.undefined_analyses``: CAM's keys are channels) or not
computed on its keys (pyramid cells, class regions) is left out with the reason logged once. Under DDP the
numerators and counts are summed over ranks before dividing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from dnlseg.analysis.attention_consistency import (
    boundary_consistency,
    category_consistency,
    labels_on_grid,
    sampled_category_consistency,
)
from dnlseg.callbacks.attention_capture import AttentionCaptureCallback
from dnlseg.callbacks.module_interface import ignore_index_of, inference_mode_of
from dnlseg.context import CapturedAttention, find_context_blocks

log = logging.getLogger(__name__)

# their names in dnlseg.context.ANALYSES (ContextBlock.undefined_analyses)
CATEGORY, BOUNDARY = "category_consistency", "boundary_consistency"
PAIRWISE = "pairwise_category_consistency"
UNARY = "unary_boundary_consistency"


class AttentionConsistency(AttentionCaptureCallback):
    """Logs ``val/pairwise_category_consistency`` and ``val/unary_boundary_consistency`` (module docstring).

    Args:
        num_queries: labelled query cells sampled per image for the pairwise metric (fewer if fewer exist);
            null: every labelled query (the fused kernel with one-hot label values; costs about one more
            attention per block call).
        radius: boundary band half-width in key cells for the unary metric.
        max_batches: measure on at most this many validation batches per epoch (null: all; ``dnlseg analyze``
            measures every batch it runs).
        seed: seed of the query sampling; the same queries are drawn for the same batch every epoch.
    """

    capture_validation = True

    def __init__(
        self, num_queries: int | None = 64, radius: int = 1, max_batches: int | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        if num_queries is not None and num_queries < 1:
            raise ValueError(f"num_queries={num_queries} must be >= 1 or null (every labelled query)")
        if radius < 0:
            raise ValueError(f"radius={radius} must be >= 0")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches={max_batches} must be >= 1 or null")
        self.num_queries = num_queries
        self.radius = radius
        self.max_batches = max_batches
        self.seed = seed
        self._blocks: list[str] = []
        self._sums: dict[str, Tensor] = {}  # "<metric>/<block>" -> (2,) [sum of values, count]
        self._ignore_index = 255
        self._undefined: dict[str, set[str]] = {}  # analysis -> the blocks it has no meaning for

    @classmethod
    def analyze_arguments(cls, output_dir: Path) -> dict[str, Any]:
        return {"max_batches": None}  # a checkpoint's analysis measures every batch (--limit_batches bounds it)

    # -- the capture's lifecycle (``AttentionCaptureCallback``) -------------------------------------------------
    def begin_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        self._sums = {}
        self._blocks = list(find_context_blocks(pl_module))
        if not self._blocks or trainer.sanity_checking:
            self._blocks = []
            return False
        if inference_mode_of(pl_module) != "whole":
            rank_zero_warn("AttentionConsistency: sliding-window inference is not supported; no metrics logged")
            self._blocks = []
            return False
        self._ignore_index = ignore_index_of(pl_module)
        return True

    def capture_batch(self, batch_idx: int, dataloader_idx: int) -> bool:
        return self.max_batches is None or batch_idx < self.max_batches

    def measure_batch(self, trainer, pl_module, captured, batch, batch_idx, dataloader_idx) -> None:
        # what has no meaning for a block (CAM's channels, EMA's bases) or is not computed on its keys: logged once
        self._undefined = {a: self.skipped(pl_module, a, captured) for a in (CATEGORY, BOUNDARY)}
        for name, call in captured.items():
            self._accumulate(name, call, batch["mask"], batch_idx + 100_003 * dataloader_idx)

    def end_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._blocks:
            return
        keys = [f"{metric}/{name}" for name in self._blocks for metric in (PAIRWISE, UNARY)]
        totals = torch.stack([self._sums.get(k, torch.zeros(2, dtype=torch.float64)) for k in keys])  # (K, 2)
        totals = trainer.strategy.reduce(totals.to(pl_module.device), reduce_op="sum").cpu()  # over ranks
        first = self._blocks[0]
        for key, (total, count) in zip(keys, totals.tolist(), strict=True):
            if count == 0:
                continue  # the block has no such term, or no labelled query / boundary was seen
            metric, name = key.split("/", 1)
            value = torch.tensor(total / count, dtype=torch.float32, device=pl_module.device)
            # The same value on every rank already: a max over the ranks keeps it exact (a mean could move the last
            # bit) and keeps Lightning's epoch-level DDP check quiet.
            pl_module.log(f"val/{metric}/{name}", value, sync_dist=True, reduce_fx="max")
            if name == first:
                pl_module.log(f"val/{metric}", value, sync_dist=True, reduce_fx="max")

    # -- the metrics ---------------------------------------------------------------------------------------------
    def _add(self, key: str, values: Tensor) -> None:
        step = torch.tensor([values.double().sum().item(), values.numel()], dtype=torch.float64)
        self._sums[key] = self._sums.get(key, torch.zeros(2, dtype=torch.float64)) + step

    def _accumulate(self, name: str, captured: CapturedAttention, masks: Tensor, batch_key: int) -> None:
        masks = masks.to(captured.values.device)
        key_labels = labels_on_grid(masks, captured.key_size)  # (N, Hk, Wk)
        if captured.pairwise_query is not None and name not in self._undefined.get(CATEGORY, ()):
            query_labels = labels_on_grid(masks, captured.query_size).flatten(1)  # (N, P)
            if self.num_queries is None:
                values = category_consistency(captured, query_labels, key_labels.flatten(1), self._ignore_index)
            else:
                rows = self.sample_queries(query_labels, batch_key)  # (N, Q)
                values = sampled_category_consistency(
                    captured, query_labels, key_labels.flatten(1), rows, self._ignore_index
                )
            self._add(f"{PAIRWISE}/{name}", values)
        if captured.unary_logits is not None and name not in self._undefined.get(BOUNDARY, ()):
            self._add(f"{UNARY}/{name}", boundary_consistency(captured, key_labels, self.radius))

    def sample_queries(self, query_labels: Tensor, batch_key: int = 0) -> Tensor:
        """(N, P) labels -> (N, Q) query indices: ``num_queries`` random labelled cells per image, seeded by batch.

        Unlabelled cells are drawn only where an image has fewer labelled cells than Q; they are then skipped by
        ``pairwise_category_consistency``.
        """
        N, P = query_labels.shape
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_key)
        scores = torch.rand(N, P, generator=generator).to(query_labels.device)  # (N, P) in [0, 1)
        scores = scores + (query_labels != self._ignore_index)  # labelled cells rank first
        assert self.num_queries is not None  # sampled only with num_queries set
        return scores.topk(min(self.num_queries, P), dim=1).indices  # (N, Q)
