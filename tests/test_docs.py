"""The repository's documents agree with the code and with each other: every reference to the science document
points into docs/science.md (a section it has), and the README's variant table is ``dnlseg.context.VARIANTS``."""

import re
import subprocess

import yaml

from dnlseg.context import VARIANTS
from tests.recipes import ROOT

SCIENCE = ROOT / "docs" / "science.md"
SECTION_REFERENCE = re.compile(r"docs/science\.md(?:'s)? sections? (\d+(?:\.\d+)?)(?:(?: and |-)(\d+(?:\.\d+)?))?")
OLD_REFERENCE = re.compile(r"SCIENCE\.md|SCIENCE's|\.\./shared")
# Files allowed to cite the old out-of-repository document while another branch rewrites them (none left: the
# experiments cite docs/science.md since the ablation branch). A file fixed while listed fails the test.
NOT_YET: set[str] = set()


def tracked_text_files() -> dict[str, str]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = {}
    for name in names:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yaml", ".toml", ".txt", ""} and path.is_file():
            files[name] = path.read_text(errors="replace")
    return files


def science_sections() -> set[str]:
    """The numbers of its headings: ``## 2. What ...`` -> 2, ``### 2.1 Why ...`` -> 2.1."""
    return set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", SCIENCE.read_text(), re.M))


def test_the_science_document_is_in_the_repository_with_its_numbered_sections():
    assert {"1", "2", "2.1", "2.2", "3", "4", "5", "6", "6.1", "6.2"} <= science_sections()


def test_nothing_cites_the_science_document_outside_the_repository():
    files = tracked_text_files()
    citing = {name for name, text in files.items() if OLD_REFERENCE.search(text)} - {"tests/test_docs.py"}
    assert citing == NOT_YET & files.keys(), sorted(citing ^ NOT_YET)


def test_every_section_cited_exists_in_docs_science():
    sections = science_sections()
    cited = {
        (name, number)
        for name, text in tracked_text_files().items()
        for match in SECTION_REFERENCE.finditer(text)
        for number in match.groups()
        if number
    }
    assert cited, "no file cites docs/science.md by section"
    missing = sorted((name, number) for name, number in cited if number not in sections)
    assert not missing, missing


VARIANT_HEADER = "| variant | label | `class_path` | `init_args` | pairwise term | unary term |"


def variant_table() -> list[str]:
    """The README's variant table, row by row, from ``VARIANTS``."""
    rows = [VARIANT_HEADER, "|---|---|---|---|---|---|"]
    for name, variant in VARIANTS.items():
        context = variant.context_config()
        if context is None:
            class_path, init_args = "-", "`context: null`"
        else:
            args = context["init_args"]
            flow = yaml.safe_dump(args, default_flow_style=True, sort_keys=False, width=1000).strip()
            class_path, init_args = f"`{context['class_path']}`", f"`{flow}`" if args else "(its defaults)"
        rows.append(
            f"| `{name}` | {variant.label} | {class_path} | {init_args} | {variant.pairwise} | {variant.unary} |"
        )
    return rows


def test_the_readme_variant_table_is_the_variant_table_of_the_code():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert VARIANT_HEADER in lines, "README.md has no variant table; it should be:\n" + "\n".join(variant_table())
    start = lines.index(VARIANT_HEADER)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    expected = variant_table()
    assert lines[start:end] == expected, "README.md's variant table should be:\n" + "\n".join(expected)


def test_the_python_example_of_the_blocks_runs():
    text = (ROOT / "docs" / "analyses.md").read_text()
    section = text[text.index("## The context blocks in Python") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("```\n", 10)]
    namespace: dict = {}
    exec(compile(code, "docs/analyses.md (The context blocks in Python)", "exec"), namespace)
    assert namespace["w"].shape == (1, 2, namespace["call"].pairwise_key.shape[1])


def test_the_readme_lists_every_subcommand_of_the_command():
    from dnlseg.cli.command import SUBCOMMANDS

    text = (ROOT / "README.md").read_text()
    listed = re.search(r"`dnlseg --help` lists the subcommands \(([^)]*)\)", " ".join(text.split()))
    assert listed, "README.md no longer says which subcommands `dnlseg --help` lists"
    assert re.findall(r"`(\w+)`", listed.group(1)) == list(SUBCOMMANDS)


def test_the_training_page_quotes_what_the_cpu_answers_to_16_mixed():
    import pytest

    from dnlseg.cli.preflight import check_hardware
    from dnlseg.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        check_hardware({"trainer": {"accelerator": "cpu", "precision": "16-mixed"}})
    text = " ".join((ROOT / "docs" / "training.md").read_text().split())  # the quote may wrap across lines
    assert f"`dnlseg: {refused.value}`" in text
