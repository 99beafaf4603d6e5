"""Every command the README and the docs pages show in a ``bash`` block parses: its subcommand, its options and its
config keys exist (``dnlseg ... --print_config`` would accept them), its config file and the scripts it runs are in
the repository, its ``make`` target is in the Makefile. Placeholders (a run folder, ``...``) stand for a recipe."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

import pytest

from tests.recipes import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
ASSIGNMENT = re.compile(r"^(?:export )?([A-Z_]+)=(\S+)$")
RUN_CONFIG = re.compile(r"runs/(\w+)/(\w+)/version_\d+/config\.yaml")
PLACEHOLDER_CONFIG = ROOT / "configs" / "synthetic" / "dnl.yaml"
# Options of the subcommands themselves, not config keys (LightningCLI's and analyze/export's own).
SUBCOMMAND_OPTIONS = {"--ckpt_path", "--print_config", "--verbose", "--output_dir", "--help"}


@dataclass
class Shown:
    document: str
    line: str
    argv: list[str]  # the words after ``dnlseg`` (or after ``make``)
    program: str  # "dnlseg", "make" or "python"


def expand(word: str, variables: dict[str, str]) -> str:
    """``$NAME`` replaced by the value a ``NAME=value`` line of the same block gave it."""
    return re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), word)


def shown_commands() -> list[Shown]:
    shown = []
    for document in DOCUMENTS:
        for block in BASH_BLOCK.findall(document.read_text()):
            variables: dict[str, str] = {}
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if not words:
                    continue
                if len(words) == 1 and (assignment := ASSIGNMENT.match(words[0])):
                    variables[assignment.group(1)] = assignment.group(2)
                    continue
                words = [expand(word, variables) for word in words]
                name = document.relative_to(ROOT).as_posix()
                if "dnlseg" in words or ".venv/bin/dnlseg" in words:
                    start = words.index("dnlseg") if "dnlseg" in words else words.index(".venv/bin/dnlseg")
                    shown.append(Shown(name, line, words[start + 1 :], "dnlseg"))
                elif words[0] == "make":
                    shown.append(Shown(name, line, words[1:], "make"))
                elif words[0] == "python" and words[1].endswith(".py"):
                    shown.append(Shown(name, line, words[1:], "python"))
    return shown


SHOWN = shown_commands()


def config_for(value: str) -> str:
    """The recipe a shown ``-c`` value stands for: itself if it is a file here, the recipe of a run folder, else the
    synthetic DNL recipe (``...``, ``copy.yaml``, ``<run>/config.yaml``)."""
    if (ROOT / value).is_file():
        return str(ROOT / value)
    run = RUN_CONFIG.search(value)
    if run and (ROOT / "configs" / run.group(1) / f"{run.group(2)}.yaml").is_file():
        return str(ROOT / "configs" / run.group(1) / f"{run.group(2)}.yaml")
    assert value.startswith(("runs/", "...", "copy.yaml", "<")) or "/" not in value, f"no config file {value}"
    return str(PLACEHOLDER_CONFIG)


def config_overrides(words: list[str]) -> list[str]:
    """The ``--key=value`` / ``--key value`` words that are config keys (dotted), values with ``...`` dropped."""
    out, i = [], 0
    while i < len(words):
        word = words[i]
        key = word.split("=", 1)[0]
        takes_value = "=" not in word and i + 1 < len(words) and not words[i + 1].startswith("--")
        value = word.split("=", 1)[1] if "=" in word else (words[i + 1] if takes_value else None)
        if key.startswith("--") and "." in key and key not in SUBCOMMAND_OPTIONS and value != "...":
            out.append(f"{key}={value}" if value is not None else key)
        i += 2 if takes_value else 1
    return out


def check_lightning_command(argv: list[str]) -> None:
    from dnlseg.cli.lightning_cli import resolve_config

    config = argv[argv.index("-c") + 1] if "-c" in argv else str(PLACEHOLDER_CONFIG)
    resolve_config(config_for(config), *config_overrides(argv[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("shown", [s for s in SHOWN if s.program == "dnlseg"], ids=lambda s: f"{s.document}: {s.line}")
def test_every_dnlseg_command_shown_parses(shown):
    from dnlseg.cli.command import SUBCOMMANDS

    argv = shown.argv
    if argv in ([], ["--help"]):
        return
    subcommand = argv[0]
    assert subcommand in SUBCOMMANDS, f"{shown.document}: unknown subcommand in {shown.line!r}"
    if "--help" in argv or subcommand == "prepare":
        return
    if subcommand in ("analyze", "export"):
        module = __import__(f"dnlseg.cli.{subcommand}", fromlist=["parse"])
        options, overrides = module.parse([a if a != "..." else "x" for a in argv[1:]])
        from dnlseg.cli.lightning_cli import resolve_config

        resolve_config(config_for(options.config), *config_overrides(overrides))
        return
    if subcommand == "convert":
        from dnlseg.cli import convert

        parsed = convert.parse(argv[1:]) if hasattr(convert, "parse") else None
        assert parsed is not None or "--ckpt_path" in argv
        return
    check_lightning_command(argv)


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("shown", [s for s in SHOWN if s.program != "dnlseg"], ids=lambda s: f"{s.document}: {s.line}")
def test_every_make_target_and_script_shown_exists(shown):
    if shown.program == "python":
        assert (ROOT / shown.argv[0]).is_file(), f"{shown.document}: no script {shown.argv[0]}"
        return
    targets = [w for w in shown.argv if "=" not in w]
    assert set(targets) <= make_targets(), f"{shown.document}: no make target {targets} ({shown.line!r})"
    for word in shown.argv:
        if word.startswith("CONFIG="):
            assert (ROOT / word.split("=", 1)[1]).is_file(), f"{shown.document}: no config {word}"


@pytest.mark.slow
def test_make_train_overrides_shown_parse():
    for shown in SHOWN:
        if shown.program == "make" and shown.argv[:1] == ["train"]:
            config = next((w.split("=", 1)[1] for w in shown.argv if w.startswith("CONFIG=")), str(PLACEHOLDER_CONFIG))
            args = next((shlex.split(w.split("=", 1)[1]) for w in shown.argv if w.startswith("ARGS=")), [])
            check_lightning_command(["fit", "-c", config, *args])


def test_the_documents_show_the_everyday_commands():
    """The extraction works: the README's workflows are found (a broken pattern would pass every test above)."""
    readme = [s.argv[0] for s in SHOWN if s.document == "README.md" and s.program == "dnlseg"]
    assert {"fit", "validate", "predict", "analyze", "export"} <= set(readme)
    assert len([s for s in SHOWN if s.program == "dnlseg"]) >= 25


def test_every_path_in_the_readme_map_exists():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Where things are", 1)[1].split("\n## ", 1)[0]
    paths = re.findall(r"^\| `([^`]+)`(?:, `([^`]+)`)? \|", section, re.M)
    assert len(paths) >= 10
    for first, second in paths:
        for path in filter(None, (first, second)):
            assert (ROOT / path).exists(), f"README's map names {path}, which does not exist"


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 250
    map_line = next(i for i, line in enumerate(readme) if line.startswith("## Where things are"))
    assert map_line < 60  # near the top
    for page in re.findall(r"\]\((docs/[\w.]+|CONTRIBUTING\.md|tests/README\.md)\)", "\n".join(readme)):
        assert (ROOT / page).is_file(), page


def test_a_document_names_no_source_path_that_does_not_exist():
    for document in [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "CONTRIBUTING.md"]:
        if not document.exists():
            continue
        for path in re.findall(r"`((?:src/)?dnlseg/[\w/]+\.py)`", document.read_text()):
            full = ROOT / path if path.startswith("src/") else ROOT / "src" / path
            assert full.is_file(), f"{document.name} names {path}, which does not exist"
