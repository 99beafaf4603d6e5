"""Every N steps, measure on the current batch how the loss gradient splits between pairwise and unary logits.

Runs one extra forward of the training loss inside ``capture_attention`` and takes the gradient dL/dy at each
context block's attention output from autograd (never touching parameter ``.grad``). For ``num_queries`` query rows
i sampled per image (all rows when the grid has no more), the upstream gradient of the attention weights follows
from y_i = sum_j w_ij v_j as

    G_ij = dL/dw_ij = dL/dy_i . v_j                        (N, Q, Pk), never the whole (P, Pk)

and, holding G fixed, the gradients of the call's ``combine(p, u, rows)`` on those rows (restricted to each query's
keys: CCNet's row and column, ISA's group) give per block:

    separation/<block>/pairwise_logit_grad     ||dL/dp|| over the sampled rows
    separation/<block>/unary_logit_grad        ||dL/du|| from the sampled rows' weights
    separation/<block>/cross_sensitivity       ``dnlseg.analysis.gradient_separation`` on the sampled rows

With every row sampled these are exactly the full-matrix quantities; with fewer they are those of the sampled
rows (the unary gradient is the sampled rows' contribution), so the memory is O(Q Pk) at any image size. The
cross-sensitivity of DNL stays exactly 0 on any set of rows. For NL, p and u are its implicit decomposition. Where a
block gets no number the reason is logged once and kept in ``not_computed``: a quantity without meaning for it
(``ContextBlock.undefined_analyses``: EMA's attention carries no gradient), weights that are no function of (p, u)
(dot-product NL), a missing term (GC: no pairwise term, no cross-sensitivity), a loss that does not reach the
captured output.

Training is unchanged: parameters and optimiser state are not touched, every buffer (BatchNorm's running statistics,
EMA's bases) is restored,
and the probe runs inside ``torch.random.fork_rng`` with its own generator, so the global RNG stream continues as
without it. Under DDP every rank probes its own batch (SyncBatchNorm needs all ranks in the forward) and rank zero
logs.
"""

from __future__ import annotations

from typing import cast

import lightning as L
import torch
from torch import Tensor

from dnlseg.analysis import cross_sensitivity
from dnlseg.callbacks.attention_capture import AttentionCaptureCallback
from dnlseg.callbacks.module_interface import LossTerms
from dnlseg.context import CapturedAttention, find_context_blocks, select_rows


class SeparationProbe(AttentionCaptureCallback):
    """Logs ``separation/<block>/{pairwise_logit_grad,unary_logit_grad,cross_sensitivity}`` every N steps.

    Args:
        every_n_steps: probe after optimiser steps divisible by this.
        relative_step: size of the pairwise-logit perturbation, ||dp|| / ||p||.
        num_queries: query rows per image the gradients are taken on (all rows of a smaller grid).
        seed: seed of the probe's own generator (row sampling, perturbation direction).
    """

    requires = (LossTerms,)  # the extra forward computes the module's training loss
    analyses = ("logit_gradients", "cross_sensitivity")

    def __init__(
        self, every_n_steps: int = 50, relative_step: float = 1e-2, num_queries: int = 256, seed: int = 0
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1")
        if not relative_step > 0:
            raise ValueError(f"relative_step={relative_step} must be > 0")
        if num_queries < 1:
            raise ValueError(f"num_queries={num_queries} must be >= 1")
        self.every_n_steps = every_n_steps
        self.relative_step = relative_step
        self.num_queries = num_queries
        self.seed = seed

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps or not find_context_blocks(pl_module):
            return
        metrics = self.probe(trainer, pl_module, batch)
        if trainer.is_global_zero and metrics:
            values = torch.stack(list(metrics.values())).float().tolist()
            for logger in trainer.loggers:
                logger.log_metrics(dict(zip(metrics, values, strict=True)), step=trainer.global_step)

    def probe(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict) -> dict[str, Tensor]:
        module = cast(LossTerms, pl_module)
        with self.leave_no_trace(pl_module, grad=True):  # RNG forked, BatchNorm statistics restored after the grad
            loss, captured = self.captured_forward(trainer, pl_module, lambda: module.losses(batch)["loss"])
            skipped = self.skipped(pl_module, "logit_gradients")  # EMA: no gradient reaches its attention
            calls = {name: c for name, c in captured.items() if c.combine is not None and name not in skipped}
            outputs = [c.output for c in calls.values()]
            grads = torch.autograd.grad(loss, outputs, allow_unused=True) if outputs else []

        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + trainer.global_step)
        metrics: dict[str, Tensor] = {}
        no_cross = self.skipped(pl_module, "cross_sensitivity")
        for name, call in captured.items():
            if call.combine is None:  # dot-product NL: its weights are not a softmax of p and u
                for analysis in self.analyses:
                    self.explain(name, analysis, "its weights are not a function of its pairwise and unary logits")
        for (name, call), grad_y in zip(calls.items(), grads, strict=True):
            if grad_y is None:  # the loss does not depend on the captured output: no number, and why
                for analysis in self.analyses:
                    self.explain(name, analysis, "the loss does not depend on its captured attention output")
                continue
            if call.pairwise_query is None or call.unary_logits is None:
                self.explain(
                    name,
                    "cross_sensitivity",
                    f"it has no {'pairwise' if call.pairwise_query is None else 'unary'} term",
                )
            metrics |= self.block_metrics(name, call, grad_y, generator, cross=name not in no_cross)
        return metrics

    def sample_rows(self, count: int, batch: int, generator: torch.Generator) -> Tensor:
        """(N, Q) sorted query rows per image: all ``count`` rows in order when ``count <= num_queries``."""
        if count <= self.num_queries:
            return torch.arange(count, device=generator.device).expand(batch, count)
        scores = torch.rand(batch, count, generator=generator, device=generator.device)
        return scores.topk(self.num_queries, dim=1).indices.sort(dim=1).values

    def block_metrics(
        self, name: str, call: CapturedAttention, grad_y: Tensor, generator: torch.Generator, cross: bool = True
    ) -> dict[str, Tensor]:
        """The three numbers of one block from its captured factors and dL/dy (N, P or 1, Cv); ``cross``: whether
        the cross-sensitivity has a meaning for the block."""
        combine = call.combine
        if combine is None:  # not reached: the calls are those with a combine
            return {}
        N = grad_y.shape[0]
        rows = self.sample_rows(grad_y.shape[1], N, generator)  # (N, Q)
        upstream = select_rows(grad_y.float(), rows) @ call.values.detach().float().transpose(1, 2)  # (N, Q, Pk)
        pairwise = call.pairwise_logits(rows)
        pairwise = pairwise.detach().float().requires_grad_(True) if pairwise is not None else None
        unary = call.unary_logits.detach().float().requires_grad_(True) if call.unary_logits is not None else None
        inputs = [t for t in (pairwise, unary) if t is not None]
        with torch.enable_grad():
            weights = combine(pairwise, unary, rows).expand_as(upstream)  # (N, Q, Pk), 0 outside each query's keys
            grads = dict(zip(map(id, inputs), torch.autograd.grad(weights, inputs, upstream), strict=True))
        prefix = f"separation/{name}"
        metrics: dict[str, Tensor] = {}
        if pairwise is not None:
            metrics[f"{prefix}/pairwise_logit_grad"] = grads[id(pairwise)].norm()
        if unary is not None:
            metrics[f"{prefix}/unary_logit_grad"] = grads[id(unary)].norm()
        if pairwise is not None and unary is not None and cross:
            metrics[f"{prefix}/cross_sensitivity"] = cross_sensitivity(
                combine,
                pairwise.detach(),
                unary.detach(),
                upstream,
                self.relative_step,
                generator,
                rows=rows,
                key_mask=call.key_mask(rows),
            )
        return metrics
