"""``dnlseg analyze``: what the attention terms of a trained checkpoint attend to, without training.

    dnlseg analyze -c runs/synthetic/dnl/version_0/config.yaml --ckpt_path last
    dnlseg analyze -c configs/synthetic/nl.yaml --ckpt_path nl.ckpt --output_dir out/nl --num_images 8
    dnlseg analyze -c configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml --ckpt_path <mmseg zoo .pth> --output_dir out

Builds model and data from the config (any LightningCLI override, e.g. ``--data.init_args.root=...``, is passed
on), loads the checkpoint's weights (``--ckpt_path last``: the run's ``last.ckpt``, as for ``dnlseg validate``),
runs one validation pass on one device with ``AttentionConsistency`` and ``AttentionMapLogger``, and writes into
the checkpoint's evaluation folder (``dnlseg.cli.run_dirs``: ``<run>/eval/<checkpoint name>/analyze-<n>/``;
``--output_dir DIR`` instead), never into the run itself:

    metrics.json    every validation metric: val/mIoU, val/pairwise_category_consistency,
                    val/unary_boundary_consistency (and per block), ...; the checkpoint's step
    metrics.md      the same as a table
    step<k>_<head>_<block>_image<i>.png   attention figures of the first ``--num_images`` validation images
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from dnlseg.callbacks import AttentionConsistency, AttentionMapLogger
from dnlseg.checkpoints.checkpoint_io import AtomicCheckpointIO
from dnlseg.cli import run_dirs
from dnlseg.cli.lightning_cli import DnlsegCLI, run_cli
from dnlseg.cli.preflight import check_checkpoint_file
from dnlseg.errors import ConfigError
from dnlseg.models import SegmentationModule

log = logging.getLogger(__name__)

SUBCOMMAND_KEYS = ("ckpt_path", "weights_only", "verbose", "return_predictions", "output_dir")


def parse(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="dnlseg analyze",
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
    parser.add_argument("--num_images", type=int, default=4, help="figures of the first N validation images")
    parser.add_argument("--num_queries", type=int, default=64, help="queries per image for the pairwise metric")
    parser.add_argument("--radius", type=int, default=1, help="boundary band half-width in key cells")
    parser.add_argument("--limit_batches", type=int, default=None, help="at most this many validation batches")
    parser.add_argument("--image_scale", type=float, default=1.0, help="resize factor of the figure images")
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
    figures = AttentionMapLogger(num_images=opts.num_images, scale=opts.image_scale, output_dir=output)
    trainer = L.Trainer(
        accelerator=opts.accelerator or cli.config.trainer.accelerator,
        devices=1,  # exact numbers: no DDP padding of the validation set
        precision=cli.config.trainer.precision,
        logger=False,
        callbacks=[AttentionConsistency(num_queries=opts.num_queries, radius=opts.radius), figures],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=opts.limit_batches,  # None: every batch
    )
    (metrics,) = trainer.validate(model, datamodule=cli.datamodule, verbose=False)
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    record: dict[str, Any] = {"subcommand": "analyze", "config": str(opts.config), "ckpt_path": str(ckpt)}
    record |= {"step": model.evaluated_step, "step_source": model.weights_step_source}
    record |= {"metrics": metrics, "figures": [p.name for p in figures.written]}
    run_dirs.write_metrics(output, record, figures.written)
    for key in ("val/mIoU", "val/pairwise_category_consistency", "val/unary_boundary_consistency"):
        if key in metrics:
            log.info("%s: %.4f", key, metrics[key])
    log.info("analyze: metrics.json, metrics.md and %d figures written to %s", len(figures.written), output)
    return metrics


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
    shared = config.get("config")  # a recipe's family file, relative to the recipe: absolute for the copy
    if isinstance(shared, str):
        config["config"] = str((path.parent / shared).resolve())
    elif isinstance(shared, list):
        config["config"] = [str((path.parent / name).resolve()) for name in shared]
    return config
