"""Hyperparameters a checkpoint can hold without pickled objects, so that ``torch.load(weights_only=True)`` reads it.

Lightning stores a LightningModule's and a DataModule's ``hparams`` in every checkpoint (``hyper_parameters``,
``datamodule_hyper_parameters``). Option groups are dataclasses (``NetworkOptions``, ``LoaderOptions`` ...): pickled
as they are, a checkpoint could only be read by trusting its code (``weights_only=False``), and a resumed fit, which
Lightning loads with ``weights_only=True``, would fail. ``plain`` turns them into nested dicts of YAML values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """An option group (a dataclass) as nested dicts of YAML values; a callable (``network.context``) by its repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)
