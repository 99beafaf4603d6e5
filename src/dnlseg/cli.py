"""The ``dnlseg`` command: LightningCLI with fit / validate / test / predict, and ``prepare`` for datasets.

dnlseg fit -c configs/synthetic/dnl.yaml --model.context.init_args.temperature=0.1
dnlseg fit -c configs/synthetic/dnl.yaml --print_config
dnlseg predict -c configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml --ckpt_path last.ckpt   # PNGs via PredictionWriter
dnlseg prepare cityscapes --root /data/cityscapes   # optional: write gtFine *_labelTrainIds.png once
dnlseg analyze -c config.yaml --ckpt_path last.ckpt   # attention consistency metrics + figures (dnlseg.analyze)
dnlseg convert --ckpt_path mmseg_zoo.pth --output dnlseg.ckpt   # optional: mmseg checkpoints also load directly
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# jsonargparse's deprecation notices are about Lightning's own calls into it, not about anything a user can fix.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: E402

from dnlseg.checkpoint_io import CheckpointMismatchError  # noqa: E402
from dnlseg.models import SegmentationModule  # noqa: E402
from dnlseg.models.nonfinite import NonFiniteLossError  # noqa: E402
from dnlseg.preflight import ConfigError, check_config  # noqa: E402
from dnlseg.run_dirs import resolve_logger_version  # noqa: E402

EXIT_SIGTERM = 128 + 15  # the shell's status for a process ended by SIGTERM: schedulers read it as "pre-empted"

log = logging.getLogger(__name__)


class DnlsegCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # What the data knows is not typed twice: the model gets it from the DataModule.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        """Config errors fail here, before anything is built (``dnlseg.preflight``); a fit picks its run folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_config(config)
        if self.subcommand == "fit":
            resolve_logger_version(config)

    def predict(self, model, datamodule=None, return_predictions: bool | None = None, **kwargs):
        """``dnlseg predict``: predictions go to files (``dnlseg.callbacks.PredictionWriter``), not into memory.

        Lightning would otherwise keep every full-resolution map until the end (500 Cityscapes val images:
        8 GB of int64); ``--return_predictions true`` asks for them anyway.
        """
        return self.trainer.predict(model, datamodule=datamodule, return_predictions=bool(return_predictions), **kwargs)


def run_cli(args: list[str] | None = None, run: bool = True) -> DnlsegCLI:
    """Parse ``args`` (default: sys.argv), run the subcommand, return the CLI (trainer, model, datamodule).

    With ``run=False`` ``args`` has no subcommand: the config is parsed and everything instantiated, nothing run.
    """
    return DnlsegCLI(
        SegmentationModule,
        LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the model's typed ``optimizer``/``lr_scheduler`` arguments rule
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def prepare(args: list[str]) -> None:
    """``dnlseg prepare cityscapes [--root PATH] [--splits train val] [--overwrite]``."""
    from dnlseg.data import DatasetLayoutError, prepare_cityscapes

    parser = argparse.ArgumentParser(prog="dnlseg prepare", description="One-off dataset preparation.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    cityscapes = sub.add_parser(
        "cityscapes", help="write gtFine/<split>/<city>/*_gtFine_labelTrainIds.png from the *_gtFine_labelIds.png"
    )
    cityscapes.add_argument("--root", default=None, help="Cityscapes root (default: $CITYSCAPES_ROOT)")
    cityscapes.add_argument("--splits", nargs="+", default=["train", "val"], help="gtFine splits (train val)")
    cityscapes.add_argument("--overwrite", action="store_true", help="rewrite existing labelTrainIds files")
    parsed = parser.parse_args(args)
    try:
        written = prepare_cityscapes(parsed.root, tuple(parsed.splits), parsed.overwrite)
    except DatasetLayoutError as error:
        parser.exit(2, f"dnlseg prepare cityscapes: {error}\n")
    log.info("wrote %d labelTrainIds files", written)


def main() -> None:
    """The ``dnlseg`` console script."""
    if sys.argv[1:2] == ["prepare"]:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        prepare(sys.argv[2:])
        return
    if sys.argv[1:2] == ["convert"]:
        from dnlseg.convert import convert

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        convert(sys.argv[2:])
        return
    if sys.argv[1:2] == ["analyze"]:
        from dnlseg.analyze import analyze

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        analyze(sys.argv[2:])
        return
    try:
        run_cli()
    except SIGTERMException:
        sys.exit(EXIT_SIGTERM)  # the checkpoint was saved (CheckpointOnSigterm); non-zero: the run is not done
    except (ConfigError, CheckpointMismatchError, NonFiniteLossError) as error:
        sys.exit(f"dnlseg: {type(error).__name__}: {error}")
