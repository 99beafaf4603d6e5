"""Per-branch gradient norms of every context block, logged each optimiser step.

For each block (e.g. ``decode_head.context``) and each of its branches present -- ``query``, ``key``,
``value``, ``unary``, ``out`` (``ContextBlock.branches``) -- the L2 norm of the gradient of the branch's parameters,
plus ``pairwise`` = ||(grad W_q, grad W_k)|| and the ratio ``unary_over_pairwise``:

    branch_grad/<block>/<branch>
    branch_grad/<block>/unary_over_pairwise

Taken in ``on_before_optimizer_step``: after AMP has unscaled the gradients, before gradient clipping,
and (under DDP) after the gradients were all-reduced, so rank zero logs the synchronised values once.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from dnlseg.context import BRANCHES, ContextBlock, find_context_blocks


def branch_gradient_norms(block: ContextBlock) -> dict[str, Tensor]:
    """L2 gradient norm per branch, plus ``pairwise`` (query and key together) and ``unary_over_pairwise``."""
    norms: dict[str, Tensor] = {}
    for branch, params in block.branches().items():
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norms[branch] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if "query" in norms and "key" in norms:
        norms["pairwise"] = torch.hypot(norms["query"], norms["key"])
        if "unary" in norms:
            norms["unary_over_pairwise"] = norms["unary"] / norms["pairwise"].clamp(min=1e-30)
    return norms


def separation_layout(block_names: list[str]) -> dict:
    """TensorBoard custom-scalars layout: per block, pairwise vs unary side by side (every run in one chart)."""
    layout = {}
    for b in block_names:
        layout[f"gradient separation: {b}"] = {
            "pairwise vs unary branch gradient norm": [
                "Multiline",
                [f"branch_grad/{b}/pairwise", f"branch_grad/{b}/unary"],
            ],
            "unary / pairwise gradient ratio": ["Multiline", [f"branch_grad/{b}/unary_over_pairwise"]],
            "every branch": ["Multiline", [f"branch_grad/{b}/({'|'.join(BRANCHES)})$"]],
            "pairwise vs unary logit gradient": [
                "Multiline",
                [f"separation/{b}/pairwise_logit_grad", f"separation/{b}/unary_logit_grad"],
            ],
            "cross-sensitivity (0 = separated)": ["Multiline", [f"separation/{b}/cross_sensitivity"]],
        }
    return layout


class BranchGradientMonitor(L.Callback):
    """Logs ``branch_grad/<block>/<branch>`` for every context block every ``every_n_steps`` optimiser steps.

    Args:
        every_n_steps: log on optimiser steps divisible by this (1: every step).
    """

    def __init__(self, every_n_steps: int = 1, tensorboard_layout: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1")
        self.every_n_steps = every_n_steps
        self.tensorboard_layout = tensorboard_layout

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.tensorboard_layout and trainer.is_global_zero):
            return
        names = list(find_context_blocks(pl_module))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and names:
                logger.experiment.add_custom_scalars(separation_layout(names))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.global_step % self.every_n_steps or not trainer.is_global_zero or not trainer.loggers:
            return
        metrics: dict[str, Tensor] = {}
        for block_name, block in find_context_blocks(pl_module).items():
            for branch, norm in branch_gradient_norms(block).items():
                metrics[f"branch_grad/{block_name}/{branch}"] = norm
        if not metrics:
            return
        values = torch.stack(list(metrics.values())).float().tolist()  # one device sync for all of them
        for logger in trainer.loggers:
            logger.log_metrics(dict(zip(metrics, values, strict=True)), step=trainer.global_step)
