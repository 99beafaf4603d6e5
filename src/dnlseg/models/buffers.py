"""A copy of a module's buffers, put back after a forward pass that must leave no trace in them."""

from __future__ import annotations

import torch
from torch import nn


class BufferSnapshot:
    """The module's buffers (BatchNorm running statistics and counters) as they are now; ``restore`` writes them back.

    Used where a training-mode forward must not count: a batch skipped for a non-finite loss, an analysis probe.
    """

    def __init__(self, module: nn.Module) -> None:
        self._saved = [(buffer, buffer.clone()) for buffer in module.buffers()]

    def restore(self) -> None:
        with torch.no_grad():
            for buffer, saved in self._saved:
                buffer.copy_(saved)
