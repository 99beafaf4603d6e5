"""The poly learning-rate schedule of the recipes, as mmengine's ``PolyLR`` (docs/science.md section 6.1).

    lr_t = eta_min + (lr_0 - eta_min) * (1 - t / T)^power,   t = 0 .. T,   then eta_min

per iteration, for every parameter group from its own initial lr_0 (groups with an lr multiplier decay from
their own lr), with one absolute floor ``eta_min`` for all groups. mmengine's ``PolyLR(end=max_iters)`` takes
T = max_iters - 1, so the last of the run's iterations trains at exactly ``eta_min`` (mmseg: 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from dnlseg.models.param_groups import ParamGroup


@dataclass(frozen=True)
class OptimizationOptions:
    """How the optimiser (``model.optimizer``) treats parameter groups, and the default learning-rate schedule
    (``model.optimization``).

    Args:
        param_groups: lr / weight-decay multipliers by parameter-name pattern, e.g.
            ``[{pattern: "context\\.(query|key)\\.", wd_mult: 0.0}]`` (``dnlseg.models.param_groups``); null: one
            group.
        poly_power: exponent of the default poly schedule (0.9), used when ``model.lr_scheduler`` is null: poly over
            the run's total optimiser steps, stepped every iteration, as mmengine's ``PolyLR``.
        poly_eta_min: floor of the default poly schedule, reached at the last step (mmseg 1e-4).
    """

    param_groups: list[ParamGroup] | None = None
    poly_power: float = 0.9
    poly_eta_min: float = 0.0


class PolyLR(LRScheduler):
    """Polynomial decay to a floor, closed form (module docstring).

    Args:
        optimizer: the optimiser whose groups' ``lr`` it sets.
        total_iters: T, the iteration at which the lr reaches ``eta_min`` (>= 1).
        power: the exponent (0.9 in the recipes).
        eta_min: the floor, the same absolute value for every group (mmseg 1e-4).
    """

    def __init__(
        self, optimizer: Optimizer, total_iters: int, power: float = 0.9, eta_min: float = 0.0, last_epoch: int = -1
    ) -> None:
        if total_iters < 1:
            raise ValueError(f"poly total_iters={total_iters} must be >= 1")
        if eta_min < 0:
            raise ValueError(f"poly eta_min={eta_min} must be >= 0")
        self.total_iters = total_iters
        self.power = power
        self.eta_min = eta_min
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | Tensor]:
        t = min(self.last_epoch, self.total_iters)
        decay = (1 - t / self.total_iters) ** self.power
        return [self.eta_min + (lr_0 - self.eta_min) * decay for lr_0 in self.base_lrs]


def mmseg_total_iters(max_steps: int) -> int:
    """T of mmengine's ``PolyLR(begin=0, end=max_steps)``: ``end - begin - 1``, so step max_steps - 1 is the floor."""
    return max(1, max_steps - 1)
