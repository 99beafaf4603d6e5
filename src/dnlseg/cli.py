"""The ``dnlseg`` command: LightningCLI with fit / validate / test / predict.

dnlseg fit -c configs/synthetic/dnl.yaml --model.context.init_args.temperature=0.1
dnlseg fit -c configs/synthetic/dnl.yaml --print_config
"""

from __future__ import annotations

import os

# jsonargparse's deprecation notices are about Lightning's own calls into it, not about anything a user can fix.
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")

from lightning.pytorch import LightningDataModule  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from dnlseg.models import SegmentationModule  # noqa: E402


class DnlsegCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # What the data knows is not typed twice: the model gets it from the DataModule.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")


def run_cli(args: list[str] | None = None) -> DnlsegCLI:
    """Parse ``args`` (default: sys.argv), run the subcommand, return the CLI (trainer, model, datamodule)."""
    return DnlsegCLI(
        SegmentationModule,
        LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the model's typed ``optimizer``/``lr_scheduler`` arguments rule
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main() -> None:
    """The ``dnlseg`` console script."""
    run_cli()
