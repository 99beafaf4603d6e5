"""Over the validation set, how much the pairwise term attends to the query's own class and the unary term to
boundaries: ``val/pairwise_category_consistency`` and ``val/unary_boundary_consistency``.

Definitions (``dnlseg.analysis.attention_consistency``; 1 = no better than chance):

    pairwise-category = mean over labelled queries i of
        ( sum_j softmax_j(p_ij) D_j,label_i ) / ( mean_{j in K(i)} D_j,label_i )
        D_j: key j's class distribution -- its one-hot label for keys that are pixels (the denominator is then the
        class's share of the query's keys K(i): the whole key grid, CC's cross, ISA's group); for keys that are not
        pixels (ANN's pyramid cells, OCR's class regions) the labels of the pixels the key covers, weighted by its
        cover (``keys.cover``)
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
nothing; a metric without meaning for a block (``ContextBlock.undefined_analyses``: CAM's keys are channels, EMA's
bases have no class; a boundary of pyramid cells or class regions), a missing term or a metric without a labelled
query / boundary in the measured images is left out with the reason logged once and kept in ``not_computed`` (which
``dnlseg analyze`` reports). Under DDP the numerators and counts are summed over ranks before dividing.
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
    category_consistency,
    key_boundary_band,
    key_classes,
    labels_on_call_grid,
    num_classes_of,
    sampled_category_consistency,
    unary_boundary_consistency,
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
    analyses = (CATEGORY, BOUNDARY)

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
        self._seen: set[str] = set()  # the blocks measured in this validation

    @classmethod
    def analyze_arguments(cls, output_dir: Path) -> dict[str, Any]:
        return {"max_batches": None}  # a checkpoint's analysis measures every batch (--limit_batches bounds it)

    # -- the capture's lifecycle (``AttentionCaptureCallback``) -------------------------------------------------
    def begin_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        self._sums, self._seen = {}, set()
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
        # what has no meaning for a block (CAM's channels, EMA's bases) or its keys (a boundary of pyramid cells)
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
            metric, name = key.split("/", 1)
            if count == 0:  # the block has no such term, or no labelled query / boundary was seen
                self._explain_empty(name, metric)
                continue
            value = torch.tensor(total / count, dtype=torch.float32, device=pl_module.device)
            # The same value on every rank already: a max over the ranks keeps it exact (a mean could move the last
            # bit) and keeps Lightning's epoch-level DDP check quiet.
            pl_module.log(f"val/{metric}/{name}", value, sync_dist=True, reduce_fx="max")
            if name == first:
                pl_module.log(f"val/{metric}", value, sync_dist=True, reduce_fx="max")

    def _explain_empty(self, name: str, metric: str) -> None:
        """Record why ``metric`` has no value for block ``name`` (unless already said: undefined, a missing term)."""
        analysis = CATEGORY if metric == PAIRWISE else BOUNDARY
        if (name, analysis) in self.not_computed or name not in self._seen:
            return
        seen = "labelled query" if metric == PAIRWISE else "ground-truth boundary on its key grid"
        self.explain(name, analysis, f"no {seen} in the measured images")

    # -- the metrics ---------------------------------------------------------------------------------------------
    def _add(self, key: str, values: Tensor) -> None:
        step = torch.tensor([values.double().sum().item(), values.numel()], dtype=torch.float64)
        self._sums[key] = self._sums.get(key, torch.zeros(2, dtype=torch.float64)) + step

    def _accumulate(self, name: str, captured: CapturedAttention, masks: Tensor, batch_key: int) -> None:
        masks = masks.to(captured.values.device)
        self._seen.add(name)
        if captured.pairwise_query is None:
            self.explain(name, CATEGORY, "it has no pairwise term")
        elif name not in self._undefined.get(CATEGORY, ()):
            query_labels = labels_on_call_grid(masks, captured, "query", self._ignore_index).flatten(1)  # (N, P)
            # D (N, Pk, K): the keys' one-hot labels, or the class distribution of the pixels each key covers
            classes = key_classes(masks, captured, num_classes_of(masks, self._ignore_index), self._ignore_index)
            if self.num_queries is None:
                values = category_consistency(captured, query_labels, classes, self._ignore_index)
            else:
                rows = self.sample_queries(query_labels, batch_key)  # (N, Q)
                values = sampled_category_consistency(captured, query_labels, classes, rows, self._ignore_index)
            self._add(f"{PAIRWISE}/{name}", values)
        if captured.unary_logits is None:
            self.explain(name, BOUNDARY, "it has no unary term")
        elif name not in self._undefined.get(BOUNDARY, ()):
            band = key_boundary_band(masks, captured, self.radius)  # (N, Pk); padding (ISA) is on no boundary
            attention = captured.unary_attention()
            assert attention is not None  # it has unary logits
            self._add(f"{UNARY}/{name}", unary_boundary_consistency(attention, band))

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
