"""parse_errors: what the command-line parser refuses is one line naming the key or file, with a did-you-mean."""

import pytest

from dnlseg.cli import command
from dnlseg.cli.lightning_cli import run_cli
from dnlseg.errors import DEBUG_ENV, UsageError
from tests.recipes import ROOT

SYNTHETIC = str(ROOT / "configs/synthetic/dnl.yaml")
HELP = "`dnlseg fit --help` lists every option"


def parse_error(*args: str) -> str:
    """The message of the ``UsageError`` that ``dnlseg fit ARGS`` raises while parsing."""
    with pytest.raises(UsageError) as error:
        run_cli(["fit", *args])
    return str(error.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model.network.head_chanels=8"],
            f"unknown option --model.network.head_chanels (did you mean --model.network.head_channels?); {HELP}",
        ),
        (
            ["--trainer.max_stpes", "4"],
            f"unknown option --trainer.max_stpes (did you mean --trainer.max_steps?); unexpected argument '4'; {HELP}",
        ),
        (
            ["--model.network.context.init_args.tempreature=0.1"],
            "unknown key model.network.context.init_args.tempreature (DisentangledNonLocal2d takes no argument "
            "tempreature; did you mean model.network.context.init_args.temperature?)",
        ),
        (
            ["--data.init_args.num_trian=3"],
            "unknown key data.init_args.num_trian (SyntheticDataModule takes no argument num_trian; did you mean "
            "data.init_args.num_train?)",
        ),
        (["--model.network.head_channels=abc"], "model.network.head_channels=abc: expected int"),
        (["--trainer.enable_progress_bar=maybe"], "trainer.enable_progress_bar=maybe: expected bool or null"),
        (
            ["--model.network.context.class_path=dnlseg.context.NonLocal"],
            "model.network.context: no class dnlseg.context.NonLocal (did you mean dnlseg.context.NonLocal2d?)",
        ),
    ],
    ids=["option", "option-and-value", "init-arg", "data-init-arg", "int", "bool", "class"],
)
def test_a_mistake_on_the_command_line_is_one_line_with_a_did_you_mean(args, message, capsys):
    assert parse_error("-c", SYNTHETIC, *args) == message
    assert capsys.readouterr().err == ""  # no usage


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model.head_channels=16"],
            f"unknown option --model.head_channels (renamed --model.network.head_channels in dnlseg issue #22); {HELP}",
        ),
        (
            ["--model.context.init_args.temperature=0.1"],
            "unknown option --model.context.init_args.temperature (renamed "
            f"--model.network.context.init_args.temperature in dnlseg issue #22); {HELP}",
        ),
        (
            ["--data.init_args.batch_size=2"],
            "unknown key data.init_args.batch_size (SyntheticDataModule takes no argument batch_size; renamed "
            "data.init_args.loader.batch_size in dnlseg issue #22)",
        ),
    ],
    ids=["model-option", "model-context-init-arg", "data-init-arg"],
)
def test_an_option_under_its_name_before_issue_22_names_its_new_name(args, message):
    assert parse_error("-c", SYNTHETIC, *args) == message


def test_a_mistake_in_a_config_file_names_the_file(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer:\n  max_stpes: 3\n")
    assert parse_error("-c", SYNTHETIC, "-c", str(typo)) == (
        f"unknown key trainer.max_stpes (in {typo}) (did you mean trainer.max_steps?); {HELP}"
    )
    value = tmp_path / "value.yaml"
    value.write_text(
        "model.network.context:\n  class_path: dnlseg.context.DisentangledNonLocal2d\n  init_args:\n    unary: x\n"
    )
    assert parse_error("-c", SYNTHETIC, "-c", str(value)) == (
        f"model.network.context.init_args.unary=x (in {value}): expected one of 'conv', 'shared_key' or null"
    )


def test_an_empty_missing_or_malformed_config_file_is_named_as_such(tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    (tmp_path / "bad.yaml").write_text("trainer: [a, b\n")
    (tmp_path / "list.yaml").write_text("- trainer\n")
    assert parse_error("-c", str(tmp_path / "empty.yaml")) == (
        f"--config {tmp_path / 'empty.yaml'}: the file is empty (no keys); expected a config such as "
        "configs/synthetic/dnl.yaml"
    )
    assert parse_error("-c", str(tmp_path / "nope.yaml")) == f"--config {tmp_path / 'nope.yaml'}: no such file"
    assert parse_error(f"--config={tmp_path / 'bad.yaml'}") == (
        f"--config {tmp_path / 'bad.yaml'}: not valid YAML: while parsing a flow sequence: expected ',' or ']', but "
        "got '<stream end>' at line 2, column 1"
    )
    assert parse_error("-c", str(tmp_path / "list.yaml")).endswith(
        "expected a YAML mapping of keys (trainer:, model:, data:), got a list"
    )


def test_debug_keeps_the_parsers_full_report(monkeypatch, capsys):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(SystemExit) as exit_:
        run_cli(["fit", "-c", SYNTHETIC, "--model.head_chanels=8"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and "--trainer.max_steps" in err and "unrecognized arguments" in err


@pytest.mark.parametrize(("word", "meant"), [("fitt", "fit"), ("analyse", "analyze"), ("conver", "convert")])
def test_an_unknown_subcommand_gets_a_did_you_mean_over_every_subcommand(word, meant, monkeypatch, capsys):
    monkeypatch.setenv(DEBUG_ENV, "0")
    with pytest.raises(SystemExit) as exit_:
        command.main([word, "-c", SYNTHETIC])
    assert exit_.value.code == 2
    every = "fit, validate, test, predict, analyze, prepare, convert, export"
    assert list(command.SUBCOMMANDS) == every.split(", ")  # the list below is the command's own
    assert capsys.readouterr().err == (
        f"dnlseg: unknown subcommand {word!r} (did you mean {meant}?); the subcommands: {every}\n"
    )


@pytest.mark.parametrize(
    ("argv", "meant"),
    [
        (["fit", "-c", SYNTHETIC, "--trainer.max_step=3", "--print_config"], "--trainer.max_steps"),
        (["fit", "-c", SYNTHETIC, "--model.network.head_channel=8", "--print_config"], "--model.network.head_channels"),
    ],
)
def test_an_abbreviated_option_is_refused_not_taken_for_the_longer_one(argv, meant, monkeypatch, capsys):
    monkeypatch.setenv(DEBUG_ENV, "0")
    with pytest.raises(SystemExit) as exit_:
        command.main(argv)
    assert exit_.value.code == 2
    assert f"(did you mean {meant}?)" in capsys.readouterr().err


@pytest.mark.parametrize("subcommand", ["analyze", "export", "convert"])
def test_the_own_options_of_a_subcommand_are_not_abbreviated(subcommand):
    module = __import__(f"dnlseg.cli.{subcommand}", fromlist=["parse"])
    args = ["--ckpt"] + (["x"] if subcommand == "convert" else ["x", "-c", SYNTHETIC, "--output", "o"])
    if subcommand == "convert":
        args += ["--output", "o"]
    with pytest.raises(SystemExit):
        parsed = module.parse(args)
        if subcommand != "convert":  # parse_known_args: an unknown option is left over, not taken as --ckpt_path
            assert parsed[0].ckpt_path is None and "--ckpt" in parsed[1]
            raise SystemExit(2)
