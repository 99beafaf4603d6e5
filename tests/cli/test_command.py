"""The ``dnlseg`` console script: a top-level help with every subcommand, one-line user errors, quiet third parties."""

import os
import subprocess
import sys

import pytest
import yaml

from dnlseg.cli import command
from dnlseg.cli.command import main
from dnlseg.errors import DEBUG_ENV, ConfigError
from tests.helpers import warning_lines
from tests.test_reliability.runs import dnlseg, run_dir, tiny_config


def test_help_lists_every_subcommand_without_importing_lightning():
    code = "import sys\nfrom dnlseg.cli.command import main\nmain(['--help'])\nprint('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in ("fit", "validate", "test", "predict", "analyze", "prepare", "convert", "export"):
        assert f"    {name} " in result.stdout
    assert result.stdout.strip().endswith("False")  # no Lightning, no torch: answers at once


def test_a_user_error_is_one_line_and_exit_status_1(monkeypatch, capsys):
    def fail(argv, from_sys_argv=False):
        raise ConfigError("data.init_args.root=/x does not exist or is not a directory")

    monkeypatch.setattr(command, "run", fail)
    monkeypatch.setenv(DEBUG_ENV, "0")  # "0": off; restored afterwards (main sets it for --debug)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", "x.yaml"])
    assert exit_.value.code == "dnlseg: data.init_args.root=/x does not exist or is not a directory"  # status 1


def test_debug_lets_the_user_error_through_with_its_traceback(monkeypatch):
    def fail(argv, from_sys_argv=False):
        assert "--debug" not in argv  # the flag is not passed on to LightningCLI
        raise ConfigError("bad")

    monkeypatch.setattr(command, "run", fail)
    monkeypatch.setenv(DEBUG_ENV, "0")  # "0": off; restored afterwards (main sets it for --debug)
    with pytest.raises(ConfigError):
        main(["--debug", "fit"])
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(ConfigError):
        main(["fit"])


def test_no_verify_is_taken_off_the_command_line_and_passed_on_through_the_environment(monkeypatch):
    from dnlseg.checkpoints.weight_files import NO_VERIFY_ENV, verification_off

    seen = []
    monkeypatch.setattr(command, "run", lambda argv, from_sys_argv=False: seen.append((argv, verification_off())))
    monkeypatch.setenv(NO_VERIFY_ENV, "0")  # "0": off; restored afterwards (main sets it to "1")
    main(["validate", "-c", "x.yaml"])
    main(["validate", "--no_verify", "-c", "x.yaml"])  # anywhere on the line, as --debug
    assert seen == [(["validate", "-c", "x.yaml"], False), (["validate", "-c", "x.yaml"], True)]
    assert os.environ[NO_VERIFY_ENV] == "1"  # what DDP worker processes inherit


def test_a_bug_keeps_its_traceback(monkeypatch):
    def fail(argv, from_sys_argv=False):
        raise KeyError("a bug")

    monkeypatch.setattr(command, "run", fail)
    with pytest.raises(KeyError):
        main(["fit"])


def lightning_ctrl_c_exit():
    """What Lightning raises after a KeyboardInterrupt during a fit: ``sys.exit(1)`` inside its ``except``."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt:
        sys.exit(1)


@pytest.mark.parametrize(
    ("stop", "status"),
    [
        ("sigterm", 143),  # Lightning's SIGTERMException
        ("sigint", 130),  # the same, after a Ctrl-C (CheckpointOnSigterm marks it)
        ("second-ctrl-c", 130),  # Lightning's exit(1) after a KeyboardInterrupt
        ("ctrl-c-while-building", 130),  # a KeyboardInterrupt outside Lightning
        ("exit-1", 1),  # any other exit keeps its status
    ],
)
def test_a_fit_stopped_by_a_signal_exits_with_128_plus_its_number(monkeypatch, stop, status):
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from dnlseg.callbacks.sigterm_checkpoint import SIGNAL_ATTRIBUTE

    def fail(argv, from_sys_argv=False):
        if stop.startswith("sig"):
            error = SIGTERMException()
            if stop == "sigint":
                setattr(error, SIGNAL_ATTRIBUTE, signal.SIGINT)
            raise error
        if stop == "second-ctrl-c":
            lightning_ctrl_c_exit()
        if stop == "ctrl-c-while-building":
            raise KeyboardInterrupt
        sys.exit(1)

    monkeypatch.setattr(command, "run", fail)
    with pytest.raises(SystemExit) as exit_:
        main(["fit"])
    assert exit_.value.code == status


@pytest.mark.slow
def test_a_default_fit_validate_and_predict_print_no_warning(tmp_path):
    config = tiny_config(tmp_path, max_steps=4, val_check_interval=2)
    content = yaml.safe_load(config.read_text())
    for key in ("enable_progress_bar", "enable_model_summary", "num_sanity_val_steps"):
        del content["trainer"][key]  # Lightning's defaults, as a user has them: bar, summary, sanity check
    config.write_text(yaml.safe_dump(content, sort_keys=False))
    fit = dnlseg("fit", "-c", str(config), show_warnings=True)
    assert fit.returncode == 0, fit.stderr[-3000:]
    output = fit.stdout + fit.stderr
    assert warning_lines(output) == []
    assert "Tip:" not in output and "LeafSpec" not in output and "final val/mIoU" in output
    assert "step 4/4" in output and "Epoch" not in output and "flops" not in output.lower()
    saved = str(run_dir(tmp_path) / "config.yaml")
    for subcommand in ("validate", "predict"):
        result = dnlseg(subcommand, "-c", saved, "--ckpt_path", "last", show_warnings=True)
        assert result.returncode == 0, result.stderr[-3000:]
        assert warning_lines(result.stdout + result.stderr) == [], subcommand
