"""Config files written before issue #22 still load: the old keys and class paths, renamed on reading.

Until issue #22 a DataModule took its loader and check options as flat arguments (``data.init_args.batch_size``);
they now live in groups (``data.init_args.loader.batch_size``, ``LoaderOptions``; ``checks.label_values``,
``SetupChecks``). Issue #22 also moved modules, and with them classes a config names by ``class_path``
(``dnlseg.checkpoint_io.AtomicCheckpointIO`` is now ``dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO``).
The ``config.yaml`` of a run folder written before keeps the old keys and class paths, and
``dnlseg validate -c <run>/config.yaml --ckpt_path last`` should still work: the ``dnlseg`` command reads every
config file through ``load`` (the jsonargparse parser mode ``PARSER_MODE``), which renames them (``RENAMED``
and ``RENAMED_CLASS_PATHS``, the one table of renamed config entries) and logs once which it renamed.
Only config files are read this way; on the command line the new names are needed.
"""

from __future__ import annotations

import logging
from typing import Any

from dnlseg.errors import RenamedKeyError

log = logging.getLogger(__name__)

PARSER_MODE = "dnlseg_yaml"
DATAMODULES = "dnlseg.data."  # the class paths whose init_args are renamed (a DataModule of your own keeps its keys)

# old key of data.init_args -> its new place (issue #22)
RENAMED = {
    "batch_size": "loader.batch_size",
    "val_batch_size": "loader.val_batch_size",
    "num_workers": "loader.num_workers",
    "pin_memory": "loader.pin_memory",
    "check_label_values": "checks.label_values",
    "check_threads": "checks.threads",
}

# old class path -> its new place (issue #22 moved the modules); wherever a config file names it
RENAMED_CLASS_PATHS = {
    "dnlseg.checkpoint_io.AtomicCheckpointIO": "dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO",
    "dnlseg.sync_batchnorm.SyncBatchNormPlugin": "dnlseg.models.sync_batchnorm.SyncBatchNormPlugin",
    "dnlseg.sync_batchnorm.SyncBatchNorm": "dnlseg.models.sync_batchnorm.SyncBatchNorm",
}

_reported: set[str] = set()  # old keys and class paths already logged in this process


def rename_init_args(init_args: dict[str, Any]) -> list[str]:
    """Move the old keys of one DataModule's ``init_args`` (in place) to their new places; returns the keys moved."""
    moved = []
    for old, new in RENAMED.items():
        if old not in init_args:
            continue
        group, key = new.split(".")
        target = init_args.setdefault(group, {})
        if not isinstance(target, dict) or key in target:
            raise RenamedKeyError(
                f"data.init_args gives both {old} (its name before dnlseg issue #22) and {new}: keep {new} only"
            )
        target[key] = init_args.pop(old)
        moved.append(old)
    return moved


def rename_class_paths(config: Any, renamed: list[str]) -> Any:
    """``config`` with every string that is an old class path (a ``class_path`` value, a list entry) replaced by
    its new one, in place; appends the old paths it replaced to ``renamed``."""
    if isinstance(config, str) and config in RENAMED_CLASS_PATHS:
        renamed.append(config)
        return RENAMED_CLASS_PATHS[config]
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in list(items):
        config[key] = rename_class_paths(value, renamed)
    return config


def rename_old_keys(config: Any) -> Any:
    """``config`` (a loaded YAML value) with the old class paths and the old keys of a dnlseg DataModule's
    ``init_args`` renamed.

    A DataModule section is the value of a top-level ``data`` key, or the whole value (``--data <file>``): a
    mapping whose ``class_path`` starts with ``dnlseg.data.`` and that has ``init_args``. Anything else keeps its
    keys.
    """
    renamed: list[str] = []
    config = rename_class_paths(config, renamed)
    new_paths = sorted({path for path in renamed if path not in _reported})
    if new_paths:
        _reported.update(new_paths)
        log.warning(
            "config: class paths read under their new names (dnlseg issue #22): %s; write the new names to "
            "silence this",
            ", ".join(f"{path} -> {RENAMED_CLASS_PATHS[path]}" for path in new_paths),
        )
    if not isinstance(config, dict):
        return config
    section = config.get("data", config)
    if not isinstance(section, dict) or not str(section.get("class_path", "")).startswith(DATAMODULES):
        return config
    init_args = section.get("init_args")
    moved = rename_init_args(init_args) if isinstance(init_args, dict) else []
    new = [key for key in moved if key not in _reported]
    if new:
        _reported.update(new)
        log.warning(
            "config: data.init_args keys read under their new names (dnlseg issue #22): %s; write the new names "
            "to silence this",
            ", ".join(f"{key} -> {RENAMED[key]}" for key in new),
        )
    return config


def load(text: str) -> Any:
    """jsonargparse's YAML loader, then ``rename_old_keys``."""
    from jsonargparse import get_loader

    return rename_old_keys(get_loader("yaml")(text))


def parser_mode() -> str:
    """Register ``load`` with jsonargparse (once) and return its parser mode, for LightningCLI's ``parser_kwargs``."""
    import yaml
    from jsonargparse import set_loader

    set_loader(PARSER_MODE, load, exceptions=(yaml.YAMLError,))
    return PARSER_MODE
