"""What a training step does with a loss that is NaN or infinite: stop the fit, or skip the batch.

Checked before the backward pass, so the weights and optimiser state stay those of the last good step and
no checkpoint is written from a poisoned state. Under DDP the ranks decide together: the training step checks
the terms averaged over the processes (``losses.mean_loss_terms``, the all-reduce that also feeds the logs), so
a NaN on one rank makes every rank stop or every rank skip, and no rank waits for the others' gradients.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

from dnlseg.errors import NonFiniteLossError

log = logging.getLogger(__name__)

NonFiniteAction = Literal["stop", "skip"]
NONFINITE_ACTIONS = ("stop", "skip")


def describe_terms(losses: dict[str, Tensor]) -> str:
    """The terms as ``loss=nan, main_loss=nan, aux_loss=1.234`` (the total first)."""
    names = sorted(losses, key=lambda name: name != "loss")
    return ", ".join(f"{name}={losses[name].detach().float().item():.6g}" for name in names)


def skip_nonfinite_loss(losses: dict[str, Tensor], step: int, action: NonFiniteAction) -> bool:
    """True when this batch is to be skipped; raises ``NonFiniteLossError`` for ``action="stop"``.

    Args:
        losses: the loss terms, ``"loss"`` the total that is back-propagated; under DDP their mean over the
            processes, so that every process decides alike.
        step: the optimiser step this batch would make (the trainer's ``global_step``).
        action: "stop" (raise) or "skip" (leave the weights unchanged and go on with the next batch).
    """
    if bool(torch.isfinite(losses["loss"]).all()):
        return False
    message = f"non-finite training loss at step {step}: {describe_terms(losses)}"
    if action == "skip":
        log.warning("%s; batch skipped (model.loss.on_nonfinite=skip)", message)
        return True
    raise NonFiniteLossError(
        f"{message}. Training stopped; the last checkpoint written before this step is kept. "
        "Set model.loss.on_nonfinite=skip to skip such batches instead."
    )
