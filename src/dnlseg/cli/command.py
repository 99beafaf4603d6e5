"""The ``dnlseg`` console script: picks the subcommand, keeps third-party noise out, reports user errors in one line.

    dnlseg --help                                   # every subcommand (answers without importing Lightning)
    dnlseg fit -c configs/synthetic/dnl.yaml        # LightningCLI subcommands: fit, validate, test, predict
    dnlseg analyze -c <run>/config.yaml --ckpt_path <run>/checkpoints/last.ckpt
    dnlseg prepare cityscapes --root /data/cityscapes
    dnlseg convert --ckpt_path mmseg_zoo.pth --output dnlseg.ckpt
    dnlseg export -c <run>/config.yaml --ckpt_path <run>/checkpoints/last.ckpt --output model.onnx
    dnlseg --debug fit ...                          # or DNLSEG_DEBUG=1: full tracebacks for user errors too
    dnlseg --no_verify validate ...                 # or DNLSEG_NO_VERIFY=1: load a damaged checkpoint anyway

A mistake the user can fix (a ``dnlseg.errors.UserError``: config value, file, checkpoint, dataset layout)
ends the command with ``dnlseg: <message>`` on stderr and exit status 1, no traceback; so does a failure of the
machine (a full or read-only disk, out of memory: ``dnlseg.errors.machine_failure``). A command line the parser
refuses exits with status 2, as argparse does. Anything else is a bug and keeps its traceback. This module
imports nothing heavy at import time: ``dnlseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dnlseg.cli.third_party import silence_third_party
from dnlseg.errors import DEBUG_ENV, UsageError, UserError, debug_mode, machine_failure

# A fit stopped by a signal exits with the shell's status for it, 128 + the signal: 143 for SIGTERM (schedulers read
# it as "pre-empted"), 130 for Ctrl-C (SIGINT).
EXIT_SIGINT = 128 + 2
DEBUG_FLAG = "--debug"  # sets dnlseg.errors.DEBUG_ENV
# sets dnlseg.checkpoints.weight_files.NO_VERIFY_ENV: checkpoints load without their checksums
NO_VERIFY_FLAG = "--no_verify"

# name -> one-line description, in the order ``dnlseg --help`` lists them.
SUBCOMMANDS = {
    "fit": "train (or resume with --ckpt_path last) a model from a YAML config; writes a run folder",
    "validate": "evaluate a checkpoint on the validation split; writes metrics to the checkpoint's eval folder",
    "test": "evaluate a checkpoint on the test split; writes metrics to the checkpoint's eval folder",
    "predict": "label, colour and overlay PNGs of a checkpoint's predictions (a folder: --data.init_args.predict_dir)",
    "analyze": "attention consistency metrics and attention-map figures of a checkpoint (no training)",
    "prepare": "one-off dataset preparation (prepare cityscapes: labelTrainIds PNGs)",
    "convert": "write an mmsegmentation model-zoo checkpoint once as a dnlseg checkpoint (optional)",
    "export": "a checkpoint's network as ONNX or TorchScript (uint8 images in, logits out) with its metadata",
}
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def show_own_logs() -> None:
    """dnlseg's INFO messages (run and output folders, what was written) on stderr, as Lightning shows its own."""
    logger = logging.getLogger("dnlseg")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="dnlseg",
        description="Non-Local (NL) and Disentangled Non-Local (DNL) context heads for semantic segmentation.",
        epilog="`dnlseg <subcommand> --help` lists the options of one subcommand. --debug (or DNLSEG_DEBUG=1) shows "
        "the full traceback of an error that is otherwise reported in one line. --no_verify (or DNLSEG_NO_VERIFY=1) "
        "loads a checkpoint or weight file whose checksums do not match (a damaged file) anyway.",
    )
    sub = parser.add_subparsers(title="subcommands", metavar="<subcommand>")
    for name, description in SUBCOMMANDS.items():
        sub.add_parser(name, help=description)
    return parser


def run(argv: list[str], from_sys_argv: bool = False) -> None:
    """Run one ``dnlseg`` command line (without the program name); ``from_sys_argv``: it is ``sys.argv[1:]``."""
    if not argv or argv[0] in ("-h", "--help"):
        top_level_parser().print_help()
        return
    if argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        from dnlseg.cli.parse_errors import unknown_subcommand

        raise UsageError(unknown_subcommand(argv[0], list(SUBCOMMANDS)))
    if argv[0] == "prepare":
        from dnlseg.cli.lightning_cli import prepare

        prepare(argv[1:])
    elif argv[0] == "analyze":
        from dnlseg.cli.analyze import analyze

        analyze(argv[1:])
    elif argv[0] == "convert":
        from dnlseg.cli.convert import convert

        convert(argv[1:])
    elif argv[0] == "export":
        from dnlseg.cli.export import export

        export(argv[1:])
    else:
        from dnlseg.cli.lightning_cli import run_cli

        run_cli(None if from_sys_argv else argv)  # None: LightningCLI reads sys.argv, as DDP workers will


def main(argv: list[str] | None = None) -> None:
    """The ``dnlseg`` console script (and ``python -m dnlseg``)."""
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or debug_mode()
    no_verify = NO_VERIFY_FLAG in argv
    argv = [arg for arg in argv if arg not in (DEBUG_FLAG, NO_VERIFY_FLAG)]
    if from_sys_argv:
        sys.argv[1:] = argv
    if debug:
        os.environ[DEBUG_ENV] = "1"  # DDP worker processes re-run sys.argv, now without the flag
    if no_verify:
        from dnlseg.checkpoints.weight_files import NO_VERIFY_ENV

        os.environ[NO_VERIFY_ENV] = "1"  # read where files are loaded, in this process and the DDP workers
    silence_third_party()
    show_own_logs()
    try:
        run(argv, from_sys_argv)
    except UserError as error:
        if debug:
            raise
        if isinstance(error, UsageError):
            sys.stderr.write(f"dnlseg: {error}\n")
            sys.exit(UsageError.exit_status)
        sys.exit(f"dnlseg: {error}")
    except SystemExit as error:  # Lightning's SIGTERMException is a SystemExit (status 0 unless we say otherwise)
        if is_lightning_sigterm(error):
            from dnlseg.callbacks.sigterm_checkpoint import exit_status

            sys.exit(exit_status(error))  # 143 or 130: last.ckpt was saved (CheckpointOnSigterm); the run is not done
        if isinstance(error.__context__, KeyboardInterrupt):  # Lightning's exit(1) after a second Ctrl-C
            sys.exit(EXIT_SIGINT)
        raise
    except KeyboardInterrupt:  # Ctrl-C outside a fit's training (while building, loading): nothing to save
        sys.exit(EXIT_SIGINT)
    except Exception as error:  # a full disk, out of memory, ...: one line too (dnlseg.errors.machine_failure)
        message = None if debug else machine_failure(error, argv[0] if argv else None)
        if message is None:
            raise
        sys.exit(f"dnlseg: {message}")


def is_lightning_sigterm(error: BaseException) -> bool:
    """Whether ``error`` is Lightning's stop on SIGTERM (without importing Lightning when it was never loaded)."""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(error, module.SIGTERMException)
