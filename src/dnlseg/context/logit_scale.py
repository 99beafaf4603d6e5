"""The factor s of the attention logits q_i . k_j * s, with the temperature forms of the public implementations.

    s = 1 / (sqrt(Cq) tau)              the paper, mmseg and the official code ("fixbug": scale by 1/sqrt(Cq))
    s = sqrt(Cq) / tau                  fixbug=False: a public NL block multiplied where it meant to divide
    tau = exp(log_tau)                  temperature_form="log": a fixed tau, or a learned one kept positive
    s = softplus(t) / sqrt(Cq)          temperature_form="softplus" (learned only; the authors' mmdetection fork
                                        multiplies the logits by softplus(t)); t starts where softplus(t) = 1 / tau

docs/science.md sections 1 and 6.2.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dnlseg.context.base import check_choice

TemperatureForm = Literal["log", "softplus"]
TEMPERATURE_FORMS = ("log", "softplus")


class LogitScale(nn.Module):
    """s, a scalar tensor: ``forward()`` (formulas in the module docstring).

    Args:
        channels: Cq, the query/key width.
        temperature: tau > 0 (its starting value when learned).
        learn_temperature: make the temperature a trained parameter.
        temperature_form: "log" (tau = exp(log_tau)) or "softplus" (s = softplus(t) / sqrt(Cq); learned only).
        fixbug: True divides by sqrt(Cq); False multiplies by it (to reproduce runs made without the fix).
    """

    def __init__(
        self,
        channels: int,
        temperature: float = 1.0,
        learn_temperature: bool = False,
        temperature_form: TemperatureForm = "log",
        fixbug: bool = True,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (the paper uses 0.05)")
        check_choice("temperature_form", temperature_form, TEMPERATURE_FORMS)
        if temperature_form == "softplus" and not learn_temperature:
            raise ValueError("temperature_form='softplus' is a learned temperature: set learn_temperature=true")
        self.form = temperature_form
        self.base = 1.0 / math.sqrt(channels) if fixbug else math.sqrt(channels)
        if temperature_form == "softplus":
            inverse = 1.0 / temperature  # softplus^-1(y) = log(exp(y) - 1)
            start = inverse + math.log(-math.expm1(-inverse))
            self.softplus_temperature = nn.Parameter(torch.tensor(start))
        elif learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:  # a fixed tau is configuration, not state: not in checkpoints
            self.register_buffer("log_temperature", torch.tensor(math.log(temperature)), persistent=False)

    @property
    def temperature(self) -> Tensor:
        """tau, with s = base / tau in either form."""
        if self.form == "softplus":
            return 1.0 / F.softplus(self.softplus_temperature)
        return self.log_temperature.exp()

    def forward(self) -> Tensor:
        if self.form == "softplus":
            return self.base * F.softplus(self.softplus_temperature)
        return self.base / self.log_temperature.exp()
