"""Per-branch gradient norms of every context block, logged each optimiser step.

For each block (e.g. ``decode_head.context``) and each of its branches present -- ``query``, ``key``,
``value``, ``unary``, ``out`` (``ContextBlock.branches``) -- the L2 norm of the gradient of the branch's parameters,
plus ``pairwise`` = ||(grad W_q, grad W_k)|| and the ratio ``unary_over_pairwise``:

    branch_grad/<block>/<branch>
    branch_grad/<block>/unary_over_pairwise

Taken in ``on_before_optimizer_step``: after AMP has unscaled the gradients, before gradient clipping,
and (under DDP) after the gradients were all-reduced, so rank zero logs the synchronised values once.
At the start of a fit it writes a TensorBoard custom-scalars layout (``separation_layout``): one chart per
quantity and block, where the NL and DNL runs of a log folder compare.
"""

from __future__ import annotations

import re

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


def exactly(tag: str) -> str:
    """A custom-scalars tag regex that matches ``tag`` and nothing else: TensorBoard matches a chart's regexes with
    ``re.match`` (anchored at the start only), so ``branch_grad/b/unary`` alone would also match
    ``branch_grad/b/unary_over_pairwise``, and the ``.`` of a block name any character."""
    return re.escape(tag) + "$"


def separation_layout(block_names: list[str]) -> dict:
    """TensorBoard custom-scalars layout: per block, one chart per quantity, every run in it.

    One quantity per chart because TensorBoard colours a chart's lines by run only: the pairwise and the unary
    norm of one run would share a colour (and their magnitudes one y axis); so NL and DNL runs compare within each
    chart. Each chart's regex matches its one tag exactly (``exactly``). The layout cannot set the y range or
    outlier clipping (``layout.proto`` has no such field): that is the dashboard's "Ignore outliers" box.
    """
    layout = {}
    for b in block_names:
        grad, probe = f"branch_grad/{b}", f"separation/{b}"
        charts = {
            "pairwise branch gradient norm (query and key)": f"{grad}/pairwise",
            "unary branch gradient norm": f"{grad}/unary",
            "unary / pairwise branch gradient ratio": f"{grad}/unary_over_pairwise",
            "pairwise logit gradient ||dL/dp||": f"{probe}/pairwise_logit_grad",
            "unary logit gradient ||dL/du||": f"{probe}/unary_logit_grad",
            "cross-sensitivity (0 = separated)": f"{probe}/cross_sensitivity",
        }
        layout[f"gradient separation: {b}"] = {title: ["Multiline", [exactly(tag)]] for title, tag in charts.items()}
        layout[f"branch gradient norms: {b}"] = {
            f"{branch} branch gradient norm": ["Multiline", [exactly(f"{grad}/{branch}")]] for branch in BRANCHES
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
