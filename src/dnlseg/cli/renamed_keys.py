"""Config files written before issue #22 grouped the options still load: the old keys, renamed on reading.

Until issue #22 a DataModule took its loader and check options as flat arguments (``data.init_args.batch_size``),
and the model its 26 options (``model.encoder_name``, ``model.aux_weight`` ...); they now live in groups
(``data.init_args.loader.batch_size``, ``LoaderOptions``; ``model.network.encoder.name``, ``NetworkOptions``;
``model.loss.aux_weight``, ``LossOptions`` ...). The ``config.yaml`` of a run folder written before keeps the old
keys, and ``dnlseg validate -c <run>/config.yaml --ckpt_path last`` should still work: the ``dnlseg`` command reads
every config file through ``load`` (the jsonargparse parser mode ``PARSER_MODE``), which moves the old keys to their
new places (``RENAMED``, the one table) and logs once which it moved. Renamed are the keys of a dnlseg DataModule's
``data.init_args`` (a DataModule of your own keeps its keys) and of the ``model`` section, nested (``model:`` then
``head_channels:``) or dotted (``model.head_channels:``, as recipes write one entry). Only config files are read
this way; on the command line the new names are needed. Issue #22 also moved modules, and with them classes a
config names by ``class_path`` (``dnlseg.checkpoint_io.AtomicCheckpointIO`` is now
``dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO``): ``RENAMED_CLASS_PATHS``, renamed wherever a config file
names them.
"""

from __future__ import annotations

import logging
from typing import Any

from dnlseg.errors import RenamedKeyError

log = logging.getLogger(__name__)

PARSER_MODE = "dnlseg_yaml"
DATAMODULES = "dnlseg.data."  # the class paths whose init_args are renamed (a DataModule of your own keeps its keys)

# old key -> its new place (issue #22)
RENAMED = {
    "data.init_args.batch_size": "data.init_args.loader.batch_size",
    "data.init_args.val_batch_size": "data.init_args.loader.val_batch_size",
    "data.init_args.num_workers": "data.init_args.loader.num_workers",
    "data.init_args.pin_memory": "data.init_args.loader.pin_memory",
    "data.init_args.check_label_values": "data.init_args.checks.label_values",
    "data.init_args.check_threads": "data.init_args.checks.threads",
    "model.encoder_name": "model.network.encoder.name",
    "model.encoder_weights": "model.network.encoder.weights",
    "model.encoder_depth": "model.network.encoder.depth",
    "model.output_stride": "model.network.encoder.output_stride",
    "model.head_channels": "model.network.head_channels",
    "model.context": "model.network.context",
    "model.aux_channels": "model.network.aux_channels",
    "model.dropout": "model.network.dropout",
    "model.align_corners": "model.network.align_corners",
    "model.aux_weight": "model.loss.aux_weight",
    "model.ohem_threshold": "model.loss.ohem_threshold",
    "model.ohem_min_kept": "model.loss.ohem_min_kept",
    "model.loss_normalization": "model.loss.normalization",
    "model.on_nonfinite_loss": "model.loss.on_nonfinite",
    "model.param_groups": "model.optimization.param_groups",
    "model.poly_power": "model.optimization.poly_power",
    "model.poly_eta_min": "model.optimization.poly_eta_min",
    "model.channels_last": "model.runtime.channels_last",
    "model.compile": "model.runtime.compile",
}
SECTIONS = ("data.init_args", "model")  # where the old keys of RENAMED are, each key's prefix

# old class path -> its new place (issue #22 moved the modules); wherever a config file names it
RENAMED_CLASS_PATHS = {
    "dnlseg.checkpoint_io.AtomicCheckpointIO": "dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO",
    "dnlseg.sync_batchnorm.SyncBatchNormPlugin": "dnlseg.models.sync_batchnorm.SyncBatchNormPlugin",
    "dnlseg.sync_batchnorm.SyncBatchNorm": "dnlseg.models.sync_batchnorm.SyncBatchNorm",
}

_reported: set[str] = set()  # old keys already logged in this process


def section_renames(section: str) -> dict[str, str]:
    """The renames of one section (``"model"``), relative to it: ``{"encoder_name": "network.encoder.name", ...}``."""
    prefix = f"{section}."
    return {
        old.removeprefix(prefix): new.removeprefix(prefix) for old, new in RENAMED.items() if old.startswith(prefix)
    }


def rename_in(values: dict[str, Any], section: str) -> list[str]:
    """Move the old keys of ``values``, the mapping at ``section`` (in place), to their new places; returns the old
    keys moved, in full (``model.encoder_name``)."""
    moved = []
    for old, new in section_renames(section).items():
        if old not in values:
            continue
        *groups, key = new.split(".")
        target = values
        for group in groups:
            target = target.setdefault(group, {})
            if not isinstance(target, dict):
                break
        if not isinstance(target, dict) or key in target:
            raise RenamedKeyError(
                f"{section} gives both {old} (its name before dnlseg issue #22) and {new}: keep {new} only"
            )
        target[key] = values.pop(old)
        moved.append(f"{section}.{old}")
    return moved


def renamed_entry(entry: str) -> tuple[str, str] | None:
    """(old key, new name) of a top-level dotted entry ``model.<old key>`` or ``model.<old key>.<more>``, else None."""
    for old, new in RENAMED.items():
        if old.startswith("model.") and (entry == old or entry.startswith(f"{old}.")):
            return old, new + entry.removeprefix(old)
    return None


def new_name(key: str) -> str | None:
    """The name since issue #22 of an old dotted ``key`` (``model.head_channels``, ``model.context.init_args.x``,
    ``data.init_args.batch_size``), for a command line that still uses it; None when it was not renamed."""
    if key in RENAMED:
        return RENAMED[key]
    renamed = renamed_entry(key)
    return renamed[1] if renamed else None


def rename_dotted(config: dict[str, Any]) -> list[str]:
    """Rename the top-level dotted entries of the model's old keys (``model.context:``, ``model.context.init_args.x:``,
    as a recipe writes one entry) in place, keeping their order; returns the old keys moved."""
    moved, entries = [], {}
    for entry, value in config.items():
        renamed = renamed_entry(entry)
        if renamed is None:
            entries[entry] = value
            continue
        old, new = renamed
        if new in config:
            raise RenamedKeyError(
                f"the config gives both {entry} (its name before dnlseg issue #22) and {new}: keep {new} only"
            )
        entries[new] = value
        moved.append(old)
    if moved:
        config.clear()
        config.update(entries)
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
    """``config`` (a loaded YAML value) with the old keys of ``RENAMED`` renamed.

    A DataModule section is the value of a top-level ``data`` key, or the whole value (``--data <file>``): a
    mapping whose ``class_path`` starts with ``dnlseg.data.`` and that has ``init_args``. The model section is the
    value of a top-level ``model`` key, and the top-level entries ``model.<key>``. Anything else is returned as it is,
    but for old class paths (``RENAMED_CLASS_PATHS``), renamed wherever they are.
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
    moved = []
    section = config.get("data", config)
    if isinstance(section, dict) and str(section.get("class_path", "")).startswith(DATAMODULES):
        init_args = section.get("init_args")
        moved += rename_in(init_args, "data.init_args") if isinstance(init_args, dict) else []
    if isinstance(config.get("model"), dict):
        moved += rename_in(config["model"], "model")
    moved += rename_dotted(config)
    new = [key for key in dict.fromkeys(moved) if key not in _reported]
    if new:
        _reported.update(new)
        log.warning(
            "config: keys read under their new names (dnlseg issue #22): %s; write the new names to silence this",
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
