"""Every N steps, measure on the current batch how the loss gradient splits between pairwise and unary logits.

Runs one extra forward/backward of the training loss with every context block on its materialised path,
takes dL/dp, dL/du and dL/dw from autograd (never touching parameter ``.grad``), and logs per block:

    separation/<block>/pairwise_logit_grad     ||dL/dp||
    separation/<block>/unary_logit_grad        ||dL/du||
    separation/<block>/cross_sensitivity       see ``dnlseg.evaluation.gradient_separation``

For NL, p and u are its implicit decomposition p_ij + u_j. Training is unchanged: parameters and optimiser
state are not touched, BatchNorm running statistics are restored, and the probe runs inside
``torch.random.fork_rng`` with its own generator, so the global RNG stream continues as without it.
Under DDP every rank probes its own batch (SyncBatchNorm needs all ranks in the forward) and rank zero logs.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from dnlseg.context import find_context_blocks
from dnlseg.evaluation import cross_sensitivity


class SeparationProbe(L.Callback):
    """Logs ``separation/<block>/{pairwise_logit_grad,unary_logit_grad,cross_sensitivity}`` every N steps.

    Args:
        every_n_steps: probe after optimiser steps divisible by this.
        relative_step: size of the pairwise-logit perturbation, ||dp|| / ||p||.
        seed: seed of the probe's own generator for the perturbation direction.
    """

    def __init__(self, every_n_steps: int = 50, relative_step: float = 1e-2, seed: int = 0) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1")
        if not relative_step > 0:
            raise ValueError(f"relative_step={relative_step} must be > 0")
        self.every_n_steps = every_n_steps
        self.relative_step = relative_step
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
        blocks = {name.removeprefix("network."): b for name, b in find_context_blocks(pl_module).items()}
        saved_buffers = [(buf, buf.clone()) for buf in pl_module.buffers()]
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        try:
            for block in blocks.values():
                block.keep_attention = True
            with (
                torch.random.fork_rng(devices=devices),
                torch.enable_grad(),
                trainer.precision_plugin.forward_context(),
            ):
                loss = pl_module.losses(batch)["loss"]
            maps = {name: block.last_attention for name, block in blocks.items()}
            wanted = [t for m in maps.values() for t in (m.weights, m.pairwise_logits, m.unary_logits) if t is not None]
            grads = dict(zip(map(id, wanted), torch.autograd.grad(loss, wanted, allow_unused=True), strict=True))
        finally:
            for block in blocks.values():
                block.keep_attention = False
                block.last_attention = None
            with torch.no_grad():
                for buf, saved in saved_buffers:
                    buf.copy_(saved)

        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + trainer.global_step)
        metrics: dict[str, Tensor] = {}
        for name, m in maps.items():
            grad_p = grads.get(id(m.pairwise_logits)) if m.pairwise_logits is not None else None
            grad_u = grads.get(id(m.unary_logits)) if m.unary_logits is not None else None
            if grad_p is not None:
                metrics[f"separation/{name}/pairwise_logit_grad"] = grad_p.norm()
            if grad_u is not None:
                metrics[f"separation/{name}/unary_logit_grad"] = grad_u.norm()
            upstream = grads.get(id(m.weights))
            if grad_p is not None and grad_u is not None and upstream is not None:
                combine = type(blocks[name]).combine
                metrics[f"separation/{name}/cross_sensitivity"] = cross_sensitivity(
                    combine,
                    m.pairwise_logits.float(),
                    m.unary_logits.float(),
                    upstream.float(),
                    self.relative_step,
                    generator,
                )
        return metrics
