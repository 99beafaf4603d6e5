"""The ``dnlseg`` LightningCLI (fit / validate / test / predict) and ``dnlseg prepare``.

dnlseg fit -c configs/synthetic/dnl.yaml --model.network.context.init_args.temperature=0.1
dnlseg fit -c configs/synthetic/dnl.yaml --print_config
dnlseg validate -c runs/synthetic/dnl/version_0/config.yaml --ckpt_path last   # or the checkpoint file
dnlseg predict -c runs/synthetic/dnl/version_0/config.yaml --ckpt_path last --data.init_args.predict_dir=my_images
dnlseg prepare cityscapes --root /data/cityscapes   # optional: write gtFine *_labelTrainIds.png once
dnlseg convert --ckpt_path mmseg_zoo.pth --output dnlseg.ckpt   # optional: mmseg checkpoints also load directly

The console script itself (``dnlseg.cli.command``) dispatches here and reports user errors in one line. Where
each subcommand writes is ``dnlseg.cli.run_dirs``: a fit writes its run folder, an evaluation a new folder of its
own beside the checkpoint, printed at the end; no evaluation touches a run's files.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import Logger

from dnlseg.callbacks import PredictionWriter
from dnlseg.callbacks.progress import display_callbacks
from dnlseg.checkpoints.weight_files import check_resume_checkpoint
from dnlseg.cli import renamed_keys, run_dirs
from dnlseg.cli.parse_errors import one_line_parse_errors
from dnlseg.cli.preflight import check_checkpoint_file, check_config
from dnlseg.cli.third_party import silence_third_party
from dnlseg.data import SegmentationDataModule
from dnlseg.errors import ConfigError, UserError, debug_mode
from dnlseg.models import SegmentationModule

log = logging.getLogger(__name__)

EVALUATIONS = ("validate", "test", "predict")


class DnlsegCLI(LightningCLI):
    """LightningCLI with dnlseg's output folders, checks and summaries (module docstring)."""

    def __init__(self, *args, only_subcommand: str | None = None, **kwargs) -> None:
        # The parser of one subcommand is built in a fraction of the time of all four (most of the start-up
        # that is not importing Lightning): with the subcommand known from the command line, only that one.
        self.only_subcommand = only_subcommand
        self.output_folder: Path | None = None  # the run or evaluation folder this command writes
        self.output_folder_existed = True
        self.created_root: Path | None = None
        self.run_folder: run_dirs.RunFolder | None = None  # a fit's claimed (and locked) run folder
        self.run_snapshot: run_dirs.Snapshot | None = None  # an existing run folder before this fit wrote it
        self.resume_step: int | None = 0  # the global step the fit starts from (None: unknown)
        # Config files are read with the data keys renamed since issue #22 moved to their new places (old run folders).
        kwargs.setdefault("parser_kwargs", {"parser_mode": renamed_keys.parser_mode()})
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self.remove_unfinished_output()
            raise
        finally:
            if self.run_folder is not None:
                self.run_folder.release()

    def init_parser(self, **kwargs: Any):
        # A parse error is raised, not printed with the whole usage, and reported in one line (parse_errors);
        # --debug keeps jsonargparse's own report.
        kwargs.setdefault("exit_on_error", debug_mode())
        # No abbreviations: argparse would take --trainer.max_step for --trainer.max_steps, and a misspelled key that
        # happens to be a prefix of another would set that other one without a word.
        kwargs.setdefault("allow_abbrev", False)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser, args) -> None:
        with one_line_parse_errors(parser, args, self.only_subcommand):
            super().parse_arguments(parser, args)

    # Lightning declares it a staticmethod and calls it on the instance: the parsers built depend on the instance here.
    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        everything = LightningCLI.subcommands()
        only = getattr(self, "only_subcommand", None)
        if only is not None and only in everything:
            return {only: everything[only]}
        return everything

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in EVALUATIONS:
            parser.add_argument(
                "--output_dir",
                type=str | None,
                default=None,
                help="Folder for everything this command writes (its config.yaml, events, metrics.json, "
                "predictions/). Default: <run>/eval/<checkpoint name>/<subcommand>-<n> beside the checkpoint.",
            )
        return parser

    def add_arguments_to_parser(self, parser) -> None:
        # What the data knows is not typed twice: the model gets it from the DataModule.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything is built; the model config stays what ``-c`` and the overrides say.

        Lightning's own version of this hook loads the whole checkpoint here and replaces the model options of the
        config *and of the command line* (e.g. ``--model.inference.flip=true``) by the hyperparameters stored in
        the checkpoint. dnlseg keeps the user's options; a checkpoint that does not fit them is reported by
        ``CheckpointMismatchError`` when it loads.
        """
        if self.config.get("subcommand"):
            check_checkpoint_file(self.config[self.config.subcommand].get("ckpt_path"))

    def before_instantiate_classes(self) -> None:
        """Config errors fail here, before anything is built (``dnlseg.cli.preflight``); then the output folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_config(config, self.subcommand)
        if self.subcommand == "fit":
            self.run_folder = run_dirs.claim_run_folder(config)
            if self.run_folder is not None:
                self.output_folder, self.created_root = self.run_folder.path, self.run_folder.created
                self.output_folder_existed = self.run_folder.created is None
                if self.output_folder_existed and run_dirs.launching_process():
                    self.run_snapshot = run_dirs.snapshot(self.run_folder.path)
            last = self.resume_checkpoint(config)
            if config.ckpt_path == "last" and last is not None:
                check_checkpoint_file(last, "ckpt_path (last)")
        elif self.subcommand in EVALUATIONS:
            self.choose_evaluation_folder(config)

    def choose_evaluation_folder(self, config) -> None:
        """Send this evaluation's outputs to its own folder (``run_dirs.evaluation_dir``), never into the run."""
        config.ckpt_path = self.evaluated_checkpoint(config, config.ckpt_path)
        if config.ckpt_path is None:
            log.warning(
                "%s without --ckpt_path: the model keeps its initial, untrained weights; "
                "give --ckpt_path <file> to evaluate a trained model",
                self.subcommand,
            )
        assert self.subcommand is not None  # validate, test or predict
        untrained_root = run_dirs.logger_root(config) or Path(config.trainer.default_root_dir or ".")
        folder = run_dirs.evaluation_dir(self.subcommand, config.ckpt_path, config.output_dir, untrained_root)
        run_dirs.redirect_outputs(config, folder)
        self.claim_output_folder(folder)

    @staticmethod
    def evaluated_checkpoint(config, ckpt_path: str | None) -> str | None:
        """The file an evaluation (validate, test, predict, ``dnlseg analyze``) loads for ``--ckpt_path``: ``last``
        is the run's ``last.ckpt`` (``latest_last_checkpoint``), a file is itself; Lightning's other keywords are
        refused."""
        if ckpt_path == "last":
            ckpt_path = DnlsegCLI.latest_last_checkpoint(config)
            check_checkpoint_file(ckpt_path, "ckpt_path (last)")
        elif ckpt_path in ("best", "hpc", "registry"):
            raise ConfigError(
                f"ckpt_path={ckpt_path}: give the checkpoint file to evaluate "
                "(e.g. runs/<dataset>/<name>/version_<n>/checkpoints/step...-miou....ckpt) or `last`"
            )
        return ckpt_path

    @staticmethod
    def latest_last_checkpoint(config) -> str:
        """``--ckpt_path last`` of an evaluation: ``checkpoints/last.ckpt`` of the run the config's logger names."""
        root = run_dirs.logger_root(config)
        version = getattr(run_dirs.logger_args(config), "version", None)
        if version is None and root is not None:
            version = run_dirs.latest_with_last(root)
        if root is not None and version is not None:
            path = root / (version if isinstance(version, str) else f"version_{version}") / "checkpoints" / "last.ckpt"
            if path.is_file():
                return str(path)
        raise ConfigError(
            f"ckpt_path=last: no checkpoints/last.ckpt in the run folders under {root} "
            "(trainer.logger.init_args.save_dir / name): give the checkpoint file"
        )

    def claim_output_folder(self, folder: Path | None) -> None:
        """Remember ``folder`` and the first of its ancestors this command will create (removed if it fails)."""
        self.output_folder = folder
        self.output_folder_existed = folder is None or folder.exists()
        self.created_root = folder
        while folder is not None and not folder.parent.exists() and folder.parent != folder:
            folder = self.created_root = folder.parent

    def resume_checkpoint(self, config) -> str | None:
        """The checkpoint file a ``fit`` config resumes from: ``--ckpt_path``, or the run's ``last.ckpt`` for ``last``
        (None: a new run)."""
        if config.ckpt_path != "last":
            return config.ckpt_path
        last = self.output_folder / "checkpoints" / "last.ckpt" if self.output_folder is not None else None
        return str(last) if last is not None and last.is_file() else None

    def before_fit(self) -> None:
        """Before the fit writes anything: the checkpoint it resumes from must fit the model built from the config."""
        ckpt_path = self.resume_checkpoint(self.config[self.subcommand])
        self.resume_step = check_resume_checkpoint(self.model, ckpt_path) if ckpt_path is not None else 0

    def remove_unfinished_output(self) -> None:
        """After a failure: remove the folder this command created if it did not get to write a result; put back an
        existing run folder as it was if the fit did not train a step (``run_dirs.restore``)."""
        if self.output_folder is None:
            return
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not trainer.is_global_zero:
            return  # other processes leave the folder to rank zero
        # A fit that trained keeps what it wrote (its events, checkpoints); one that did not leaves no trace.
        untrained = trainer is None or trainer.global_step in (0, self.resume_step)
        if self.output_folder_existed:
            if self.run_snapshot is not None and untrained:
                run_dirs.restore(self.output_folder, self.run_snapshot)
        elif untrained:
            run_dirs.remove_unfinished(self.output_folder, self.created_root)

    def instantiate_classes(self) -> None:
        """Build model, data and trainer; a value an ``__init__`` refuses is a ``ConfigError`` naming the section,
        unless dnlseg's own ``UserError`` (naming the key and the file itself) is in the chain: that one is raised."""
        try:
            super().instantiate_classes()
        except (ValueError, MisconfigurationException) as error:
            user_error = outermost_user_error(error)
            if user_error is not None:
                raise user_error  # noqa: B904 -- it carries its own cause (the file's error); ``error`` only wraps it
            raise ConfigError(constructor_error(error, self.config)) from error

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Lightning's, with dnlseg's progress bar (in steps) and model summary as the defaults (callbacks.progress)."""
        section = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
        trainer_config = {**section.get("trainer", {}), **kwargs}
        configured = trainer_config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        added = display_callbacks(trainer_config)  # may set enable_model_summary=False (its docstring)
        overrides = {
            "callbacks": [*configured, *added],
            "enable_model_summary": trainer_config.get("enable_model_summary"),
        }
        return super().instantiate_trainer(**{**kwargs, **overrides})

    def predict(self, model, datamodule=None, return_predictions: bool | None = None, **kwargs):
        """``dnlseg predict``: predictions go to files (``dnlseg.callbacks.PredictionWriter``), not into memory.

        Lightning would otherwise keep every full-resolution map until the end (500 Cityscapes val images:
        8 GB of int64); ``--return_predictions true`` asks for them anyway.
        """
        if not any(isinstance(cb, PredictionWriter) for cb in trainer_callbacks(self.trainer)):
            raise ConfigError(
                "trainer.callbacks has no dnlseg.callbacks.PredictionWriter: dnlseg predict would write nothing; "
                "add `- class_path: dnlseg.callbacks.PredictionWriter` to trainer.callbacks (as the shipped configs do)"
            )
        return self.trainer.predict(model, datamodule=datamodule, return_predictions=bool(return_predictions), **kwargs)

    def after_predict(self) -> None:
        writers = [cb for cb in trainer_callbacks(self.trainer) if isinstance(cb, PredictionWriter)]
        if self.trainer.is_global_zero and not any(writer.written for writer in writers):
            raise ConfigError("dnlseg predict wrote nothing: the predict set is empty")
        self.report("predictions", [writer.resolve_dir(self.trainer) for writer in writers])

    def after_validate(self) -> None:
        self.write_metrics("validate")

    def after_test(self) -> None:
        self.write_metrics("test")

    def write_metrics(self, subcommand: str) -> None:
        """``metrics.json`` / ``metrics.md`` of a validate or test run in its evaluation folder."""
        if not self.trainer.is_global_zero or self.output_folder is None:
            return
        config = self.config[subcommand]
        record = {
            "subcommand": subcommand,
            "config": [str(path) for path in config.get("config") or []],
            "ckpt_path": config.ckpt_path,
            "step": self.model.evaluated_step,  # its TensorBoard scalars are logged at this step too
            "step_source": self.model.weights_step_source,
            "metrics": {k: float(v) for k, v in self.trainer.callback_metrics.items()},
        }
        self.report("metrics", [run_dirs.write_metrics(self.output_folder, record)])

    def report(self, what: str, paths: list[Path]) -> None:
        if self.trainer.is_global_zero:
            log.info("%s: %s written to %s", self.subcommand, what, ", ".join(str(p) for p in paths))


def config_section(error: BaseException) -> str:
    """The config section whose class raised ``error`` in its ``__init__``: model, data, trainer.callbacks, ..."""
    sections: tuple[tuple[type, str], ...] = (
        (LightningModule, "model"),
        (LightningDataModule, "data"),
        (Callback, "trainer.callbacks"),
        (Logger, "trainer.logger"),
        (Trainer, "trainer"),
    )
    tb: TracebackType | None = root_exception(error).__traceback__
    section = "config"
    while tb is not None:  # outermost first: the config's own class, not the module it builds inside
        owner = tb.tb_frame.f_locals.get("self") if tb.tb_frame.f_code.co_name == "__init__" else None
        for cls, name in sections:
            if isinstance(owner, cls):
                return f"{name} ({type(owner).__name__})"
        tb = tb.tb_next
    return section


def constructor_error(error: BaseException, config: Any) -> str:
    """The one-line message for a value an ``__init__`` refused: ``<section>: <its message>``.

    A class the config names below a section (``model.network.context``: the context block, built inside the model)
    is named by its own key, and the arguments the config gives it by theirs: ``temperature=0.0 must be > 0``
    becomes ``model.network.context (NonLocal2d): model.network.context.init_args.temperature=0.0 must be > 0``.
    The block's constructor is the check; nothing checks its arguments before.
    """
    message = root_cause(error)
    section = config.get(config.get("subcommand")) if config is not None and config.get("subcommand") else config
    nested = configured_class_key(error, section)
    if nested is None:
        return f"{config_section(error)}: {message}"
    key, cls = nested
    given = section.get(f"{key}.init_args") or {}  # what the config sets (not in_channels: the head gives it)
    arguments = [name for name in inspect.signature(cls).parameters if name in given]
    if arguments:
        message = re.sub(rf"(?<![\w.])({'|'.join(map(re.escape, arguments))})=", rf"{key}.init_args.\1=", message)
    return f"{key} ({cls.__name__}): {message}"


def configured_class_key(error: BaseException, config: Any) -> tuple[str, type] | None:
    """(key, class) of the innermost ``__init__`` in ``error``'s traceback whose class ``config`` (one
    subcommand's) names by a ``class_path`` below a top-level section (e.g. ``model.network.context``), or None."""
    keys: dict[type, str] = {}  # the configured class -> its key
    for key, value in config.items() if config is not None else ():
        if key.endswith(".class_path") and key.count(".") > 1 and isinstance(value, str):
            module, _, name = value.rpartition(".")
            cls = getattr(sys.modules.get(module), name, None)  # built already: its module is imported
            if isinstance(cls, type):
                keys[cls] = key.removesuffix(".class_path")
    found = None
    tb: TracebackType | None = root_exception(error).__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self") if tb.tb_frame.f_code.co_name == "__init__" else None
        if owner is not None and type(owner) in keys:
            found = (keys[type(owner)], type(owner))
        tb = tb.tb_next
    return found


def trainer_callbacks(trainer: Trainer) -> list[Callback]:
    """``trainer.callbacks``: set by Lightning's callback connector in ``Trainer.__init__``, undeclared on the class."""
    return trainer.callbacks  # type: ignore[attr-defined]


def outermost_user_error(error: BaseException) -> UserError | None:
    """The first ``UserError`` of a chain, from the outermost exception in (jsonargparse wraps what an ``__init__``
    raised in a ``ValueError`` of its own, with the subtypes it tried)."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def root_exception(error: BaseException) -> BaseException:
    """The first exception of a chain (jsonargparse wraps the one an ``__init__`` raised)."""
    while (cause := error.__cause__ or error.__context__) is not None:
        error = cause
    return error


def root_cause(error: BaseException) -> str:
    return str(root_exception(error))


def run_cli(args: list[str] | None = None, run: bool = True, cli_class: type[DnlsegCLI] = DnlsegCLI) -> DnlsegCLI:
    """Parse ``args`` (default: sys.argv), run the subcommand, return the CLI (trainer, model, datamodule).

    With ``run=False`` ``args`` has no subcommand: the config is parsed and everything instantiated, nothing run.
    ``cli_class``: a ``DnlsegCLI`` subclass (``dnlseg analyze`` builds its own trainer).
    """
    silence_third_party()
    first = (sys.argv[1:] if args is None else list(args))[:1]
    return cli_class(
        SegmentationModule,
        SegmentationDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the model's typed ``optimizer``/``lr_scheduler`` arguments rule
        save_config_kwargs={"overwrite": True},  # a fit's own folder (resumed: the same run); an evaluation's new one
        args=args,
        run=run,
        only_subcommand=first[0] if run and first else None,
    )


class ConfigReader(DnlsegCLI):
    """Only parses: the config is merged and checked against the typed arguments; nothing is seeded or built."""

    def parse_arguments(self, parser, args) -> None:
        with one_line_parse_errors(parser, args):
            self.config = parser.parse_args(args)  # ``args`` only: the caller's own sys.argv is no command line here

    def _parse_ckpt_path(self) -> None: ...

    def _set_seed(self) -> None: ...

    def before_instantiate_classes(self) -> None: ...

    def instantiate_classes(self) -> None: ...


def resolve_config(config_file: str | Path, *overrides: str) -> dict[str, Any]:
    """The whole config that ``dnlseg fit -c config_file [overrides] --print_config`` shows, as a dict.

    A recipe that composes its family's shared file (its ``config:`` key) comes back merged, every default filled
    in: what a script that edits a recipe (tests, experiments) should start from, instead of the file's own YAML.
    """
    silence_third_party()
    reader = ConfigReader(
        SegmentationModule,
        SegmentationDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        args=["-c", str(config_file), *overrides],
        run=False,
    )
    return yaml.safe_load(reader.parser.dump(reader.config, skip_unset=False))


def prepare(args: list[str]) -> None:
    """``dnlseg prepare cityscapes [--root PATH] [--splits train val] [--overwrite]``."""
    from dnlseg.data import prepare_cityscapes

    parser = argparse.ArgumentParser(
        prog="dnlseg prepare", allow_abbrev=False, description="One-off dataset preparation."
    )
    sub = parser.add_subparsers(dest="dataset", required=True)
    cityscapes = sub.add_parser(
        "cityscapes", help="write gtFine/<split>/<city>/*_gtFine_labelTrainIds.png from the *_gtFine_labelIds.png"
    )
    cityscapes.add_argument("--root", default=None, help="Cityscapes root (default: $CITYSCAPES_ROOT)")
    cityscapes.add_argument("--splits", nargs="+", default=["train", "val"], help="gtFine splits (train val)")
    cityscapes.add_argument("--overwrite", action="store_true", help="rewrite existing labelTrainIds files")
    parsed = parser.parse_args(args)
    written = prepare_cityscapes(parsed.root, tuple(parsed.splits), parsed.overwrite)  # DatasetLayoutError: one line
    log.info("wrote %d labelTrainIds files", written)
