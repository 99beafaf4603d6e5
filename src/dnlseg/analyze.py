"""``dnlseg analyze``: what the attention terms of a trained checkpoint attend to, without training.

    dnlseg analyze -c runs/synthetic/dnl/version_0/config.yaml \
        --ckpt_path runs/synthetic/dnl/version_0/checkpoints/last.ckpt
    dnlseg analyze -c configs/synthetic/nl.yaml --ckpt_path nl.ckpt --output out/nl --num_images 8 --limit_batches 10
    dnlseg analyze -c configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml --ckpt_path <mmseg model-zoo .pth> --output out

Builds model and data from the config (any LightningCLI override, e.g. ``--data.init_args.root=...``, is passed
on), loads the checkpoint, runs one validation pass on one device with ``AttentionConsistency`` and
``AttentionMapLogger``, and writes into ``--output`` (default ``<checkpoint dir>/<checkpoint name>_analysis``):

    metrics.json    every validation metric: val/mIoU, val/pairwise_category_consistency,
                    val/unary_boundary_consistency (and per block), ...
    metrics.md      the same as a table
    step<k>_<block>_image<i>.png   attention figures of the first ``--num_images`` validation images
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from pathlib import Path

import lightning as L
import torch
import yaml

from dnlseg.callbacks import AttentionConsistency, AttentionMapLogger
from dnlseg.checkpoint_io import AtomicCheckpointIO

log = logging.getLogger(__name__)

SUBCOMMAND_KEYS = ("ckpt_path", "weights_only", "verbose", "return_predictions")


def parse(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="dnlseg analyze",
        description="Attention consistency metrics and attention-map figures of a checkpoint (no training). "
        "Other arguments are LightningCLI overrides of the config (e.g. --data.init_args.root=PATH).",
    )
    parser.add_argument("-c", "--config", required=True, help="the run's config.yaml (or the config it was fit with)")
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to analyse")
    parser.add_argument("--output", default=None, help="output folder (default: <ckpt dir>/<ckpt name>_analysis)")
    parser.add_argument("--num_images", type=int, default=4, help="figures of the first N validation images")
    parser.add_argument("--num_queries", type=int, default=64, help="queries per image for the pairwise metric")
    parser.add_argument("--radius", type=int, default=1, help="boundary band half-width in key cells")
    parser.add_argument("--limit_batches", type=int, default=None, help="at most this many validation batches")
    parser.add_argument("--image_scale", type=float, default=1.0, help="resize factor of the figure images")
    parser.add_argument("--accelerator", default=None, help="override the config's trainer.accelerator")
    return parser.parse_known_args(args)


def analyze(args: list[str]) -> dict[str, float]:
    """Run ``dnlseg analyze`` with ``args`` (no subcommand); returns the validation metrics it wrote."""
    from dnlseg.cli import run_cli

    opts, overrides = parse(args)
    ckpt = Path(opts.ckpt_path)
    if not ckpt.is_file():
        raise FileNotFoundError(f"--ckpt_path {ckpt}: no such checkpoint file")
    output = Path(opts.output) if opts.output else ckpt.parent / f"{ckpt.stem}_analysis"
    config = yaml.safe_load(Path(opts.config).read_text())
    for key in SUBCOMMAND_KEYS:  # a fit's saved config.yaml has them; without a subcommand they are not options
        config.pop(key, None)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        cli = run_cli(["-c", str(Path(tmp) / "config.yaml"), *overrides], run=False)
    figures = AttentionMapLogger(num_images=opts.num_images, scale=opts.image_scale, output_dir=output)
    figures.step = int(torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False).get("global_step", 0))
    trainer = L.Trainer(
        accelerator=opts.accelerator or cli.config.trainer.accelerator,
        devices=1,  # exact numbers: no DDP padding of the validation set
        precision=cli.trainer.precision,
        logger=False,
        callbacks=[AttentionConsistency(num_queries=opts.num_queries, radius=opts.radius), figures],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=opts.limit_batches if opts.limit_batches is not None else 1.0,
        plugins=[AtomicCheckpointIO()],  # reads dnlseg and mmsegmentation checkpoints alike
    )
    (metrics,) = trainer.validate(cli.model, datamodule=cli.datamodule, ckpt_path=str(ckpt), verbose=False)
    metrics = {k: float(v) for k, v in sorted(metrics.items())}
    output.mkdir(parents=True, exist_ok=True)
    finite = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}  # NaN: a class never seen -> null
    record = {"config": str(opts.config), "ckpt_path": str(ckpt), "metrics": finite}
    record["figures"] = [p.name for p in figures.written]
    (output / "metrics.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    lines = [f"# Analysis of `{ckpt}`", "", f"Config: `{opts.config}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items()]
    lines += ["", *[f"![{p.name}]({p.name})" for p in figures.written], ""]
    (output / "metrics.md").write_text("\n".join(lines))
    for key in ("val/mIoU", "val/pairwise_category_consistency", "val/unary_boundary_consistency"):
        if key in metrics:
            log.info("%s: %.4f", key, metrics[key])
    log.info("wrote %s, metrics.md and %d figures to %s", "metrics.json", len(figures.written), output)
    return metrics
