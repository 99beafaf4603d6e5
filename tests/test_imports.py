"""The modules of src/dnlseg import each other one way: no import circle, counting imports inside functions."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(package: str = "dnlseg") -> dict[str, Path]:
    """``dnlseg.context.base`` -> its file; a package by its ``__init__.py``."""
    files = {}
    for path in (SRC / package).rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file (top level, functions, methods).

    ``from pkg import x`` counts as importing ``pkg.x`` when that is a module, else ``pkg``; an import of a
    module inside a package does not count as importing the package's ``__init__`` (which every import does).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def owner(dotted: str) -> str | None:  # the longest known module that ``dotted`` names or lies in
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {owner(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found |= {owner(f"{base}.{alias.name}") for alias in node.names}
    return found - {None, name}


def import_graph(package: str = "dnlseg") -> dict[str, set[str]]:
    files = module_files(package)
    return {name: imported_modules(name, path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle ``[a, b, ..., a]`` of ``graph``, or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_src_dnlseg_has_no_import_circle():
    graph = import_graph()
    assert {"dnlseg.cli.lightning_cli", "dnlseg.cli.command", "dnlseg.context.base"} <= graph.keys()
    assert "dnlseg.cli.lightning_cli" in graph["dnlseg.cli.command"]  # lazy imports are seen (imported in a function)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    ("graph", "circle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d"}}, ["d", "d"]),
    ],
)
def test_find_cycle(graph, circle):
    assert find_cycle(graph) == circle


def test_a_lazy_import_inside_a_method_and_relative_imports_are_edges(tmp_path):
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("from .leaf import x\n")
    (tmp_path / "pkg" / "sub" / "leaf.py").write_text("class A:\n    def f(self):\n        from pkg import top\n")
    (tmp_path / "pkg" / "top.py").write_text("from pkg.sub import leaf\n")
    files = {"pkg": "pkg/__init__.py", "pkg.sub": "pkg/sub/__init__.py", "pkg.sub.leaf": "pkg/sub/leaf.py"}
    files["pkg.top"] = "pkg/top.py"
    known = set(files)
    graph = {name: imported_modules(name, tmp_path / file, known) for name, file in files.items()}
    assert graph == {
        "pkg": set(),
        "pkg.sub": {"pkg.sub.leaf"},
        "pkg.sub.leaf": {"pkg.top"},
        "pkg.top": {"pkg.sub.leaf"},
    }
    assert find_cycle(graph) == ["pkg.sub.leaf", "pkg.top", "pkg.sub.leaf"]


def test_every_error_class_is_declared_in_dnlseg_errors():
    """One errors module: a class deriving from an exception is declared in ``dnlseg/errors.py`` only."""
    declared = {}
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            bases = [ast.unparse(base) for base in node.bases] if isinstance(node, ast.ClassDef) else []
            if any(base.endswith(("Error", "Exception")) for base in bases):
                declared[node.name] = name
    assert {"ConfigError", "UsageError", "WeightFileError", "CheckpointMismatchError"} <= declared.keys()
    assert {cls: module for cls, module in declared.items() if module != "dnlseg.errors"} == {}


def test_a_package_init_exports_only_its_own_modules_names():
    """``dnlseg/<package>/__init__.py`` imports from its own modules only (no re-export of another package)."""
    foreign = {}
    for name, path in module_files().items():
        if path.name != "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dnlseg"):
                if not node.module.startswith(name + "."):
                    foreign.setdefault(name, []).append(node.module)
    assert foreign == {}
