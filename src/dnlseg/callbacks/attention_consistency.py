"""Over the validation set, how much the pairwise term attends to the query's own class and the unary term to
boundaries: ``val/pairwise_category_consistency`` and ``val/unary_boundary_consistency``.

Definitions (``dnlseg.evaluation.attention_consistency``; 1 = no better than chance):

    pairwise-category = mean over sampled labelled queries i of
        ( sum_{j : label_j = label_i} softmax_j(p_ij) ) / ( #{j : label_j = label_i} / Pk )
    unary-boundary    = mean over images of
        ( sum_{j in band} softmax_j(u_j) ) / ( #band / Pk ),   band = key cells within ``radius`` of a label change

For NL, p and u are its implicit decomposition ``p_ij + u_j``. No extra network forward: during the normal
validation forward, hooks put each context block on its materialised path for its FIRST call of the batch
(keep_attention; eval mode, so outputs equal the fused path's up to rounding) and reduce the maps to the two
sums at once, so no P x P matrix outlives the block call. With whole-image inference the first call is the
first scale, unflipped, whose grid the labels are resized to (nearest). Sliding-window inference is not
supported (a window's position is not known to the block): the callback warns once and logs nothing.

Logged per block ``val/<metric>/<block>`` and, for the first block, the plain ``val/<metric>``. Blocks without
a pairwise (unary-only) or unary (pairwise-only) term log only what exists; a network without a block logs
nothing. Under DDP the numerators and counts are summed over ranks before dividing.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from dnlseg.context import ContextBlock, find_context_blocks
from dnlseg.evaluation.attention_consistency import (
    boundary_band,
    labels_on_grid,
    pairwise_category_consistency,
    unary_boundary_consistency,
)

log = logging.getLogger(__name__)

PAIRWISE = "pairwise_category_consistency"
UNARY = "unary_boundary_consistency"


class AttentionConsistency(L.Callback):
    """Logs ``val/pairwise_category_consistency`` and ``val/unary_boundary_consistency`` (module docstring).

    Args:
        num_queries: labelled query cells sampled per image for the pairwise metric (fewer if fewer exist).
        radius: boundary band half-width in key cells for the unary metric.
        max_batches: measure on at most this many validation batches per epoch (null: all).
        max_attention_mb: skip (and warn once) a block call whose materialised maps would exceed this many MiB,
            estimated as 3 fp32 (N, P, Pk) tensors: a whole 1024x2048 Cityscapes image at output stride 8 has
            P = Pk = 32768, ~12 GiB.
        seed: seed of the query sampling; the same queries are drawn for the same batch every epoch.
    """

    def __init__(
        self,
        num_queries: int = 64,
        radius: int = 1,
        max_batches: int | None = None,
        max_attention_mb: float = 4096,
        seed: int = 0,
    ) -> None:
        if num_queries < 1:
            raise ValueError(f"num_queries={num_queries} must be >= 1")
        if radius < 0:
            raise ValueError(f"radius={radius} must be >= 0")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches={max_batches} must be >= 1 or null")
        self.num_queries = num_queries
        self.radius = radius
        self.max_batches = max_batches
        self.max_attention_mb = max_attention_mb
        self.seed = seed
        self._warned_size = False
        self._handles: list = []
        self._blocks: dict[str, ContextBlock] = {}
        self._sums: dict[str, Tensor] = {}  # "<metric>/<block>" -> (2,) [sum of ratios, count]
        self._masks: Tensor | None = None
        self._ignore_index = 255
        self._batch_idx = 0
        self._armed: set[str] = set()

    # -- Lightning hooks ---------------------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hooks()
        self._sums = {}
        self._blocks = {name.removeprefix("network."): b for name, b in find_context_blocks(pl_module).items()}
        if not self._blocks or trainer.sanity_checking:
            self._blocks = {}
            return
        inference = getattr(pl_module, "inference", None)
        if getattr(inference, "mode", "whole") != "whole":
            rank_zero_warn("AttentionConsistency: sliding-window inference is not supported; no metrics logged")
            self._blocks = {}
            return
        self._ignore_index = int(pl_module.hparams.get("ignore_index", 255))
        for name, block in self._blocks.items():
            self._handles.append(block.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(block.register_forward_hook(self._post_hook(name)))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._blocks or (self.max_batches is not None and batch_idx >= self.max_batches):
            self._armed = set()
            return
        self._masks, self._batch_idx = batch["mask"], batch_idx + 100_003 * dataloader_idx
        self._armed = set(self._blocks)  # each block materialises its first call of this batch

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._armed, self._masks = set(), None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._remove_hooks()
        if not self._blocks:
            return
        keys = [f"{metric}/{name}" for name in self._blocks for metric in (PAIRWISE, UNARY)]
        totals = torch.stack([self._sums.get(k, torch.zeros(2, dtype=torch.float64)) for k in keys])  # (K, 2)
        totals = trainer.strategy.reduce(totals.to(pl_module.device), reduce_op="sum").cpu()  # over ranks
        first = next(iter(self._blocks))
        for key, (total, count) in zip(keys, totals.tolist(), strict=True):
            if count == 0:
                continue  # the block has no such term, or no labelled query / boundary was seen
            metric, name = key.split("/", 1)
            value = torch.tensor(total / count, dtype=torch.float32, device=pl_module.device)
            # The same value on every rank already; sync_dist only keeps Lightning's epoch-level DDP check quiet.
            pl_module.log(f"val/{metric}/{name}", value, sync_dist=True)
            if name == first:
                pl_module.log(f"val/{metric}", value, sync_dist=True)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._remove_hooks()

    # -- hooks on the context blocks ---------------------------------------------------------------------------
    def _pre_hook(self, name: str):
        def hook(block: ContextBlock, args) -> None:
            if name not in self._armed:
                return
            N, _, H, W = args[0].shape
            Pk = -(-H // 2) * -(-W // 2) if block.downsample else H * W
            megabytes = 3 * N * H * W * Pk * 4 / 2**20  # weights, p and a softmax of (N, P, Pk) fp32
            if megabytes > self.max_attention_mb:
                self._armed.discard(name)
                if not self._warned_size:
                    self._warned_size = True
                    rank_zero_warn(
                        f"AttentionConsistency: skipping {name} on inputs of {H}x{W} cells: its materialised "
                        f"attention needs ~{megabytes:.0f} MiB > max_attention_mb={self.max_attention_mb}"
                    )
                return
            block.keep_attention = True

        return hook

    def _post_hook(self, name: str):
        def hook(block: nn.Module, args, output) -> None:
            if name not in self._armed:
                return
            self._armed.discard(name)
            maps, block.last_attention, block.keep_attention = block.last_attention, None, False
            if maps is not None and self._masks is not None:
                self._accumulate(name, maps)

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for block in self._blocks.values():
            block.keep_attention, block.last_attention = False, None

    # -- the metrics ---------------------------------------------------------------------------------------------
    def _add(self, key: str, values: Tensor) -> None:
        step = torch.tensor([values.double().sum().item(), values.numel()], dtype=torch.float64)
        self._sums[key] = self._sums.get(key, torch.zeros(2, dtype=torch.float64)) + step

    def _accumulate(self, name: str, maps) -> None:
        masks = self._masks.to(maps.weights.device)
        if maps.pairwise_logits is not None:
            query_labels = labels_on_grid(masks, maps.query_size).flatten(1)  # (N, P)
            key_labels = labels_on_grid(masks, maps.key_size).flatten(1)  # (N, Pk)
            rows = self.sample_queries(query_labels)  # (N, Q)
            logits = torch.gather(  # (N, Q, Pk): the sampled rows of p
                maps.pairwise_logits, 1, rows[..., None].expand(-1, -1, maps.pairwise_logits.shape[-1])
            )
            attention = logits.float().softmax(-1)  # a = softmax_j(p_ij)
            values = pairwise_category_consistency(
                attention, torch.gather(query_labels, 1, rows), key_labels, self._ignore_index
            )
            self._add(f"{PAIRWISE}/{name}", values)
        if maps.unary_logits is not None:
            band = boundary_band(labels_on_grid(masks, maps.key_size), self.radius).flatten(1)  # (N, Pk)
            saliency = maps.unary_logits[:, 0].float().softmax(-1)  # s = softmax_j(u_j), (N, Pk)
            self._add(f"{UNARY}/{name}", unary_boundary_consistency(saliency, band))

    def sample_queries(self, query_labels: Tensor) -> Tensor:
        """(N, P) labels -> (N, Q) query indices: ``num_queries`` random labelled cells per image, seeded by batch.

        Unlabelled cells are drawn only where an image has fewer labelled cells than Q; they are then skipped by
        ``pairwise_category_consistency``.
        """
        N, P = query_labels.shape
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._batch_idx)
        scores = torch.rand(N, P, generator=generator).to(query_labels.device)  # (N, P) in [0, 1)
        scores = scores + (query_labels != self._ignore_index)  # labelled cells rank first
        return scores.topk(min(self.num_queries, P), dim=1).indices  # (N, Q)
