"""``dnlseg analyze``: what the attention terms of a trained checkpoint attend to, without training.

    dnlseg analyze -c runs/synthetic/dnl/version_0/config.yaml --ckpt_path last
    dnlseg analyze -c configs/synthetic/nl.yaml --ckpt_path nl.ckpt --output_dir out/nl --num_images 8
    dnlseg analyze -c configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml --ckpt_path <mmseg zoo .pth> --output_dir out

Builds model and data from the config (any LightningCLI override, e.g. ``--data.init_args.root=...``, is passed
on), loads the checkpoint's weights (``--ckpt_path last``: the run's ``last.ckpt``, as for ``dnlseg validate``),
runs one validation pass on one device with the config's analyses, and writes into the checkpoint's evaluation
folder (``dnlseg.cli.run_dirs``: ``<run>/eval/<checkpoint name>/analyze-<n>/``; ``--output_dir DIR`` instead), never
into the run itself:

    metrics.json    every validation metric: val/mIoU, val/pairwise_category_consistency,
                    val/unary_boundary_consistency (and per block), ...; the checkpoint's step
    metrics.md      the same as a table, then every (context block, analysis) without a number or figure and why
                    (``not_computed`` in metrics.json: e.g. CAM's channels, EMA's bases, a boundary of pyramid cells)
    step<k>_<head>_<block>_image<i>.png   attention figures of the first ``--num_images`` validation images

The analyses are the config's ``trainer.callbacks`` that analyse checkpoints (``AttentionCaptureCallback``s whose
``analyze_arguments`` is not None: ``AttentionConsistency``, ``AttentionMapLogger``; training-time measurements such
as ``SeparationProbe`` are left out), each with the config's arguments, then its ``analyze_arguments`` (e.g. every
batch, figures into the output folder), then the options of ``ANALYSIS_OPTIONS`` given on the command line. A new
analysis runs here once a config lists it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from dnlseg.callbacks import AttentionCaptureCallback
from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from dnlseg.cli import run_dirs
from dnlseg.cli.lightning_cli import DnlsegCLI, run_cli
from dnlseg.cli.preflight import check_checkpoint_file
from dnlseg.context import ANALYSES, find_context_blocks
from dnlseg.errors import ConfigError
from dnlseg.models import SegmentationModule

log = logging.getLogger(__name__)

SUBCOMMAND_KEYS = ("ckpt_path", "weights_only", "verbose", "return_predictions", "output_dir")
# Shortcuts for the analyses' arguments: option -> (the argument it sets on every analysis of the config that takes
# one, type, help). Not given: the config's value.
ANALYSIS_OPTIONS = {
    "num_images": ("num_images", int, "figures of the first N validation images"),
    "num_queries": ("num_queries", int, "queries per image for the pairwise metric"),
    "radius": ("radius", int, "boundary band half-width in key cells"),
    "image_scale": ("scale", float, "resize factor of the figure images"),
}


def parse(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="dnlseg analyze",
        allow_abbrev=False,
        description="Attention consistency metrics and attention-map figures of a checkpoint (no training). "
        "Other arguments are LightningCLI overrides of the config (e.g. --data.init_args.root=PATH).",
    )
    parser.add_argument("-c", "--config", required=True, help="the run's config.yaml (or the config it was fit with)")
    parser.add_argument(
        "--ckpt_path", required=True, help="the checkpoint to analyse, or `last`: the last.ckpt of the config's run"
    )
    parser.add_argument(
        "--output_dir",
        "--output",
        dest="output_dir",
        default=None,
        help="output folder (default: <run>/eval/<checkpoint name>/analyze-<n>, beside the checkpoint)",
    )
    for option, (_, kind, text) in ANALYSIS_OPTIONS.items():
        parser.add_argument(f"--{option}", type=kind, default=None, help=f"{text} (default: the config's)")
    parser.add_argument("--limit_batches", type=int, default=None, help="at most this many validation batches")
    parser.add_argument("--accelerator", default=None, help="override the config's trainer.accelerator")
    return parser.parse_known_args(args)


class AnalysisCLI(DnlsegCLI):
    """The config parsed and checked (``dnlseg.cli.preflight``), model and data built; no trainer: analyze builds its
    own, with its callbacks only, on one device."""

    def parse_arguments(self, parser, args) -> None:
        # ``args`` is analyze's config and overrides, not the command line LightningCLI would otherwise warn about
        self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs) -> L.Trainer | None:  # type: ignore[override]  # analyze builds its own
        return None


def analyze(args: list[str]) -> dict[str, float]:
    """Run ``dnlseg analyze`` with ``args`` (no subcommand); returns the validation metrics it wrote."""
    opts, overrides = parse(args)
    if opts.ckpt_path != "last":
        check_checkpoint_file(opts.ckpt_path, "--ckpt_path")  # before anything is built
    config = read_config(Path(opts.config))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cli = run_cli(["-c", str(Path(tmp) / "config.yaml"), *overrides], run=False, cli_class=AnalysisCLI)
    evaluated = DnlsegCLI.evaluated_checkpoint(cli.config, opts.ckpt_path)  # `last`: what validate would load
    assert evaluated is not None  # --ckpt_path is required
    ckpt = Path(evaluated)
    output = run_dirs.evaluation_dir("analyze", str(ckpt), opts.output_dir, untrained_root=ckpt.parent)
    model = cli.model
    load_weights(model, ckpt)
    options = {arg: getattr(opts, option) for option, (arg, _, _) in ANALYSIS_OPTIONS.items()}
    analyses = config_analyses(cli.config.trainer.callbacks, output, options, opts.config)
    trainer = L.Trainer(
        accelerator=opts.accelerator or cli.config.trainer.accelerator,
        devices=1,  # exact numbers: no DDP padding of the validation set
        precision=cli.config.trainer.precision,
        logger=False,
        callbacks=list[L.Callback](analyses),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=opts.limit_batches,  # None: every batch
    )
    (metrics,) = trainer.validate(model, datamodule=cli.datamodule, verbose=False)
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    record: dict[str, Any] = {"subcommand": "analyze", "config": str(opts.config), "ckpt_path": str(ckpt)}
    record |= {"step": model.evaluated_step, "step_source": model.weights_step_source}
    written = [path for analysis in analyses for path in analysis.written]
    skipped = not_computed(analyses, model)
    record |= {"metrics": metrics, "figures": [p.name for p in written], "not_computed": skipped}
    run_dirs.write_metrics(output, record, written)
    for key, value in metrics.items():
        if key.count("/") == 1:  # val/mIoU, val/pairwise_category_consistency, ...; not per class or block
            log.info("%s: %.4f", key, value)
    for row in skipped:
        log.info("not computed: %s of %s: %s", row["analysis"], row["block"], row["reason"])
    log.info("analyze: metrics.json, metrics.md and %d figures written to %s", len(written), output)
    return metrics


def config_analyses(
    callbacks: Any, output_dir: Path, options: dict[str, Any], config: str
) -> list[AttentionCaptureCallback]:
    """The analyses among the config's ``trainer.callbacks`` (module docstring), built for a checkpoint.

    ``options``: {argument: value or None (not given)}; a value given is set on every analysis that takes the
    argument, and one that no analysis takes is refused.
    """
    entries = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks is not None else []
    analyses: list[AttentionCaptureCallback] = []
    names: list[str] = []
    taken: set[str] = set()
    for entry in entries:
        module, _, name = entry.class_path.rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if not (isinstance(cls, type) and issubclass(cls, AttentionCaptureCallback)):
            continue
        arguments = cls.analyze_arguments(output_dir)
        if arguments is None:
            continue  # measures training, not a checkpoint
        parameters = inspect.signature(cls).parameters
        given = {arg: value for arg, value in options.items() if value is not None and arg in parameters}
        init_args = entry.init_args.as_dict() if getattr(entry, "init_args", None) is not None else {}
        analyses.append(cls(**{**init_args, **arguments, **given}))
        names.append(name)
        taken |= given.keys()
    if not analyses:
        raise ConfigError(
            f"--config {config}: trainer.callbacks lists no analysis of checkpoints (e.g. "
            "dnlseg.callbacks.AttentionConsistency, dnlseg.callbacks.AttentionMapLogger): add one, or use a recipe "
            "under configs/"
        )
    for option, (arg, _, _) in ANALYSIS_OPTIONS.items():
        if options.get(arg) is not None and arg not in taken:
            raise ConfigError(f"--{option}: no analysis of --config {config} ({', '.join(names)}) takes `{arg}`")
    return analyses


def not_computed(analyses: list[AttentionCaptureCallback], model: L.LightningModule) -> list[dict[str, str]]:
    """[{block, analysis, reason}]: every (context block, analysis) without a number or figure, and why -- what the
    analyses that ran recorded (``AttentionCaptureCallback.not_computed``: no meaning for the block, keys that are not
    pixels, a missing term, nothing to measure), then the blocks' own reasons (``ContextBlock.undefined_analyses``)
    for the ``dnlseg.context.ANALYSES`` that analyze does not run (they measure training), so that the report has no
    silent gap. In the order of the blocks and of ``ANALYSES``."""
    reasons: dict[tuple[str, str], str] = {}
    for callback in analyses:
        for key, reason in callback.not_computed.items():
            reasons.setdefault(key, reason)
    ran = {name for callback in analyses for name in callback.analyses}
    blocks = find_context_blocks(model)
    for name, block in blocks.items():
        for analysis, reason in block.undefined_analyses.items():
            if analysis not in ran:
                reasons.setdefault((name, analysis), f"{reason} (measured in training, not by analyze)")
    order = {name: i for i, name in enumerate(blocks)}
    rank = {name: i for i, name in enumerate(ANALYSES)}
    keys = sorted(reasons, key=lambda k: (order.get(k[0], len(order)), k[0], rank.get(k[1], len(rank)), k[1]))
    return [{"block": block, "analysis": analysis, "reason": reasons[block, analysis]} for block, analysis in keys]


def load_weights(model: SegmentationModule, ckpt: Path) -> None:
    """The weights of a dnlseg or mmseg checkpoint into ``model`` through its ``on_load_checkpoint`` (mmseg keys
    mapped, shapes checked, the training step recorded), as ``validate --ckpt_path`` loads them; the training
    state (optimiser, loops, callbacks) stays unread: an analysis has no use for it."""
    checkpoint = AtomicCheckpointIO().load_checkpoint(ckpt)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"])


def read_config(path: Path) -> dict:
    """The config as a dict without the keys of a subcommand (a fit's saved config.yaml has them)."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file (expected a run's config.yaml or a recipe under configs/)")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not a readable YAML file ({error})") from error
    if not isinstance(config, dict):
        raise ConfigError(
            f"--config {path}: expected a YAML mapping (trainer:, model:, data:), got {type(config).__name__}"
        )
    for key in SUBCOMMAND_KEYS:  # without a subcommand they are not options
        config.pop(key, None)
    # A recipe names its family file (`config:`) and shared pieces (`model.network.context: ../_heads/dnl.yaml`,
    # a `trainer.callbacks` item) relative to itself: absolute for the copy. `data` names the dataset's own files.
    return {key: value if key == "data" else files_made_absolute(value, path.parent) for key, value in config.items()}


def files_made_absolute(value: Any, folder: Path) -> Any:
    """``value`` with every string that names a YAML file relative to ``folder`` made an absolute path."""
    if isinstance(value, dict):
        return {key: files_made_absolute(item, folder) for key, item in value.items()}
    if isinstance(value, list):
        return [files_made_absolute(item, folder) for item in value]
    if isinstance(value, str) and value.endswith((".yaml", ".yml")) and not Path(value).is_absolute():
        return str((folder / value).resolve())
    return value
