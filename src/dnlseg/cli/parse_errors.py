"""The command line's parse errors in one line: the cause, the key or file, and a did-you-mean.

jsonargparse reports a parse error with the whole usage of the subcommand (70-86 lines) before the cause, and the
error of a Union-typed key (``model.network.context``, ``data``, ``trainer.precision``) lists every type it tried.
``DnlsegCLI`` builds its parsers with ``exit_on_error=False`` (unless ``--debug``), so an error comes back as an
``argparse.ArgumentError``; ``one_line`` reduces its text to what was wrong where:

    dnlseg: unknown option --model.network.head_chanels (did you mean --model.network.head_channels?); `dnlseg ...
    dnlseg: unknown key model.network.context.init_args.tempreature (DisentangledNonLocal2d takes no argument ...
    dnlseg: model.network.context.init_args.unary=conv3x3: expected one of 'conv', 'shared_key' or null
    dnlseg: --config empty.yaml: the file is empty ...

``check_config_files`` reads the ``-c`` files first, so an empty, missing or malformed file is named as such.
``--debug`` and ``--help`` keep jsonargparse's own full output.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from dnlseg.cli.renamed_keys import new_name
from dnlseg.errors import UsageError, yaml_problem

CONFIG_OPTIONS = ("-c", "--config")


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known word closest to ``word`` (``difflib``), or None when none is close."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, known: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean <prefix><closest>?)``, or "" when no known word is close to ``word``."""
    close = closest(word, known)
    return f" (did you mean {prefix}{close}?)" if close else ""


def suggest(key: str, known: Iterable[str], prefix: str = "") -> str:
    """`` (renamed <new name> in dnlseg issue #22)`` for an old key (``dnlseg.cli.renamed_keys``), else
    ``did_you_mean``."""
    renamed = new_name(key)
    return f" (renamed {prefix}{renamed} in dnlseg issue #22)" if renamed else did_you_mean(key, known, prefix)


def unknown_subcommand(word: str, subcommands: Sequence[str]) -> str:
    """The message for a subcommand that is not one of ``subcommands``, with the closest of them."""
    return f"unknown subcommand {word!r}{did_you_mean(word, subcommands)}; the subcommands: {', '.join(subcommands)}"


def parser_subcommands(parser: Any) -> list[str]:
    """The subcommands LightningCLI's main parser takes (fit, validate, test, predict)."""
    action = getattr(parser, "_subcommands_action", None)
    return list(action.choices) if action is not None else []


@contextmanager
def one_line_parse_errors(parser: Any, args: Sequence[str] | None, subcommand: str | None = None) -> Iterator[None]:
    """Parse inside: the ``-c`` files checked first, a parse error (``exit_on_error=False``) raised as a one-line
    ``UsageError``. ``args``: the command line without the program name (None: ``sys.argv[1:]``)."""
    args = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
    subcommand = subcommand or next((arg for arg in args if arg in parser_subcommands(parser)), None)
    check_config_files(args)
    try:
        yield
    except argparse.ArgumentError as error:
        raise UsageError(one_line(str(error), parser, subcommand, args)) from error


def config_files(args: Sequence[str]) -> list[str]:
    """The values of every ``-c``/``--config`` option in ``args``."""
    found = []
    for i, arg in enumerate(args):
        if arg in CONFIG_OPTIONS and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def check_config_files(args: Sequence[str]) -> None:
    """Each ``-c`` file exists and is a non-empty YAML mapping; raise ``UsageError`` naming it otherwise.

    A value that is not a file but reads as inline YAML (``-c '{trainer: ...}'``, which jsonargparse accepts) is
    left to the parser."""
    for value in config_files(args):
        path = Path(value).expanduser()
        if not path.is_file():
            if not any(c in value for c in ":{}\n"):
                raise UsageError(f"--config {value}: no such file")
            continue
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise UsageError(f"--config {value}: not valid YAML: {yaml_problem(error)}") from error
        if content is None:
            raise UsageError(
                f"--config {value}: the file is empty (no keys); expected a config such as configs/synthetic/dnl.yaml"
            )
        if not isinstance(content, dict):
            raise UsageError(
                f"--config {value}: expected a YAML mapping of keys (trainer:, model:, data:), got a "
                f"{type(content).__name__}"
            )


def known_keys(parser: Any) -> list[str]:
    """The dotted keys a jsonargparse parser takes (``trainer.max_steps``, ``model.network.context``, ...)."""
    return [
        action.dest
        for action in parser._actions
        if action.dest not in ("help", "config") and not action.dest.endswith(".help")
    ]


def subcommand_parser(parser: Any, subcommand: str | None) -> Any:
    """The parser of ``subcommand`` under LightningCLI's main parser (the main parser without one)."""
    action = getattr(parser, "_subcommands_action", None)
    if action is None or subcommand is None:
        return parser
    return action._name_parser_map.get(subcommand, parser)


def accepted_arguments(class_path: str) -> list[str]:
    """The ``__init__`` argument names of the class at ``class_path`` (empty when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        parameters = inspect.signature(cls).parameters.values()
    except (ImportError, AttributeError, ValueError, TypeError):
        return []
    return [p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def sets_key(node: Any, parts: Sequence[str]) -> bool:
    """Whether the YAML ``node`` sets the key ``parts`` (nested, as dotted entries like ``model.network.context:``,
    or both)."""
    if not parts:
        return True
    if not isinstance(node, dict):
        return False
    return any(
        ".".join(parts[:i]) in node and sets_key(node[".".join(parts[:i])], parts[i:]) for i in range(1, len(parts) + 1)
    )


def where(key: str, args: Sequence[str]) -> str:
    """`` (in <file>)`` for a ``key`` set by a ``-c`` file (the last one that sets it: it rules) and not on the
    command line, else ""."""
    given = (arg.split("=", 1)[0].lstrip("-").rstrip("+") for arg in args if arg.startswith("--"))
    if any(option == key or option.startswith(key + ".") or key.startswith(option + ".") for option in given):
        return ""
    files = []
    for value in config_files(args):
        try:
            content = yaml.safe_load(Path(value).expanduser().read_text())
        except (OSError, yaml.YAMLError):
            continue
        if sets_key(content, key.split(".")):
            files.append(value)
    return f" (in {files[-1]})" if files else ""


def expected_types(text: str) -> str:
    """ "int", "one of 'conv', 'shared_key' or null", ... from jsonargparse's ``Expected a <type>`` lines."""
    literals, others = [], []
    for found in re.findall(r"Expected a (.+?)(?:\. Got value:.*)?$", text, flags=re.M):
        literal = re.fullmatch(r"typing\.Literal\[(.*)\]", found.strip())
        if literal:
            literals.append(literal.group(1))
            continue
        cls = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", found.strip())
        name = cls.group(1) if cls else found.strip()
        others.append("null" if name == "NoneType" else name)
    kinds = ([f"one of {', '.join(literals)}"] if literals else []) + others
    return " or ".join(dict.fromkeys(kinds))


def given_value(text: str) -> str | None:
    """The value jsonargparse was given, from its ``Given value:`` / ``Got value:`` lines (not a ``NestedArg``)."""
    for found in re.findall(r"(?:Given|Got) value: (.*?)(?:\. Got value: .*)?$", text, flags=re.M):
        if not found.startswith(("NestedArg(", "Namespace(")):
            return found
    return None


def one_line(message: str, parser: Any = None, subcommand: str | None = None, args: Sequence[str] = ()) -> str:
    """jsonargparse's error ``message`` (of ``subcommand``'s parser, parsing ``args``) as one line (module doc)."""
    help_hint = f"`dnlseg {subcommand} --help` lists every option" if subcommand else "`dnlseg --help`"
    known = known_keys(subcommand_parser(parser, subcommand)) if parser is not None else []

    choice = re.search(r"argument subcommand: invalid choice: '([^']*)'", message)
    if choice:  # after options of the main parser (``dnlseg -c x.yaml fitt``): only these four can stand there
        return unknown_subcommand(choice.group(1), parser_subcommands(parser))

    unrecognized = re.match(r"unrecognized arguments: (.*)", message, flags=re.S)
    if unrecognized:
        parts = []
        for token in unrecognized.group(1).split():
            key = token.lstrip("-").split("=", 1)[0]
            if token.startswith("-"):
                parts.append(f"unknown option --{key}{suggest(key, known, '--')}")
            else:
                parts.append(f"unexpected argument {token!r}")
        return "; ".join(parts) + f"; {help_hint}"

    in_config = re.match(r"Subcommand '(\w+)' does not accept option '([^']+)'", message) or re.match(
        r"Unexpected config(?: key)?: '?([^'\s]+)'?", message
    )
    if in_config and in_config.groups()[-1]:
        key = in_config.groups()[-1]
        return f"unknown key {key}{where(key, args) or ' (in the config)'}{suggest(key, known)}; {help_hint}"

    keys = re.findall(r'Parser key "([^"]+)"', message)
    outer = keys[0] if keys else None
    class_path = re.search(r"class_path[= ]'([\w.]+)'", message)

    not_accepted = re.search(r"Option '(\w+)' is not accepted", message)
    if not_accepted and outer and class_path:
        option, cls = not_accepted.group(1), class_path.group(1)
        prefix, close = f"{outer}.init_args.", closest(option, accepted_arguments(cls))
        hint = f"; did you mean {prefix}{close}?" if close else ""
        if new_name(prefix + option):
            hint = f"; renamed {new_name(prefix + option)} in dnlseg issue #22"
        return (
            f"unknown key {prefix}{option}{where(prefix + option, args)} ({cls.rpartition('.')[2]} takes no "
            f"argument {option}{hint})"
        )

    missing = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", message)
    if missing and outer:
        module, name = missing.groups()
        try:
            names = [n for n in vars(importlib.import_module(module)) if n[:1].isupper()]
        except ImportError:
            names = []
        return f"{outer}{where(outer, args)}: no class {module}.{name}{did_you_mean(name, names, module + '.')}"

    no_file = re.search(r"File does not exist: '([^']+)'", message)
    if no_file:
        return f"--{outer or 'config'} {no_file.group(1)}: no such file"

    if message.startswith("Problems parsing config"):
        return f"a config file is not valid YAML: {' '.join(message.split(':', 1)[1].split())}"

    if outer:
        key, inner = outer, message
        if len(keys) > 1:  # a key inside a class's init_args, which jsonargparse names on its own
            key = f"{outer}.init_args.{keys[-1]}" if class_path else keys[-1]
            inner = message[message.rfind('Parser key "') :]
        value, expected = given_value(inner), expected_types(inner)
        if expected:
            given = f"={value}" if value is not None else ""
            return f"{key}{given}{where(key, args)}: expected {expected}"
    return " ".join(message.split())
