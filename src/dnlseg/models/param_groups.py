"""Optimiser parameter groups from YAML: a learning-rate and weight-decay multiplier per parameter-name pattern.

    model:
      param_groups:
        - {pattern: "context\\.(query|key)\\.", wd_mult: 0.0}   # no weight decay on the block's query and key
        - {pattern: "^network\\.encoder\\.", lr_mult: 0.1}      # a slower backbone

A parameter belongs to the first rule whose ``pattern`` (a regular expression, ``re.search``) matches its qualified
name (``network.decode_head.context.query.weight``); the others form the default group. Its group trains at
``lr * lr_mult`` with weight decay ``weight_decay * wd_mult`` of the optimiser's own settings. This is mmengine's
``DefaultOptimWrapperConstructor`` with ``paramwise_cfg.custom_keys`` (mmseg's configs): a key there is a substring
of the name (a pattern without special characters is one here too), its ``lr_mult`` / ``decay_mult`` are ours, and
of several matching keys mmengine takes the longest -- here the first in the list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import Optimizer


@dataclass(frozen=True)
class ParamGroup:
    """One rule (module docstring).

    Args:
        pattern: regular expression searched in each parameter's qualified name.
        lr_mult: multiplies the optimiser's learning rate for the matching parameters.
        wd_mult: multiplies the optimiser's weight decay for the matching parameters.
    """

    pattern: str
    lr_mult: float = 1.0
    wd_mult: float = 1.0

    def __post_init__(self) -> None:
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"param_groups pattern {self.pattern!r} is not a regular expression: {error}") from None
        if self.lr_mult < 0 or self.wd_mult < 0:
            raise ValueError(
                f"param_groups {self.pattern!r}: lr_mult={self.lr_mult}, wd_mult={self.wd_mult} must be >= 0"
            )


def param_groups(module: nn.Module, rules: list[ParamGroup]) -> list[dict]:
    """``[{"params", "name", "lr_mult", "wd_mult"}, ...]``: the default group first, then one per rule that
    matches any trainable parameter. Raises ``ValueError`` for a rule that matches nothing (a typo)."""
    groups: list[dict[str, Any]] = [{"name": "default", "params": [], "lr_mult": 1.0, "wd_mult": 1.0}]
    groups += [{"name": rule.pattern, "params": [], "lr_mult": rule.lr_mult, "wd_mult": rule.wd_mult} for rule in rules]
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        index = next((i for i, rule in enumerate(rules, start=1) if re.search(rule.pattern, name)), 0)
        groups[index]["params"].append(param)
    unmatched = [group["name"] for group in groups[1:] if not group["params"]]
    if unmatched:
        raise ValueError(f"param_groups pattern(s) {unmatched} match no trainable parameter name")
    return [group for group in groups if group["params"]]


def apply_multipliers(optimizer: Optimizer) -> Optimizer:
    """Scale each group's ``lr`` and ``weight_decay`` (the optimiser's defaults) by its ``lr_mult`` / ``wd_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
        if "weight_decay" in group:
            group["weight_decay"] = group["weight_decay"] * group.get("wd_mult", 1.0)
    return optimizer
