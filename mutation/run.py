"""Mutation testing of dnlseg's core modules with mutmut 3.x and the fast tests; writes mutation/report.md.

    make mutation                                              # every core module (CORE below), one after another
    make mutation MODULE=src/dnlseg/models/losses.py           # one module (or a folder: MODULE=src/dnlseg/callbacks)
    make mutation MODULE=src/dnlseg/models/losses.py MUTATION_ARGS=--fresh   # forget earlier results first
    .venv/bin/python mutation/run.py --report                  # only rebuild report.md from mutation/results/

Each module runs in its own mutmut work folder ``.mutation/<module>/`` (git-ignored; symlinks to ``src/`` and
``tests/`` and a ``pyproject.toml`` with the module's ``[tool.mutmut]`` section), with the module's fast tests only
(``-m "not slow"``): the mirrored test file ``tests/<path>/test_<name>.py``, the callback test of the same name
``tests/callbacks/test_<name>.py`` (an analysis's evaluation function is tested through its callback), plus
``EXTRA_TESTS``. mutmut runs, for
each mutant, only the tests that executed the mutated function. A rerun is incremental: mutants of unchanged
functions keep their result, and the survivors of the last run are tested again (new tests may kill them).
``--fresh`` deletes the work folder, so every mutant is tested against the current tests.

Per module the result (counts, run time, every surviving mutant with its diff line) goes to the committed
``mutation/results/<module>.json``; ``report.md`` is rebuilt from all of them. A survivor's verdict comes from
``mutation/verdicts.toml`` (keyed by module, function and the mutated line, so it survives renumbering):
``equivalent`` (no test can tell it apart: left out of the score) or ``accepted`` (counted as not killed, with
the reason); a survivor without an entry is a test gap, reported as ``TODO``. A survivor of the previous
committed result that an incremental run kills is listed as killed by a new test (a ``--fresh`` run starts
that list anew: the earlier survivors may be of code that has changed since).

score = (killed + timeout) / (mutants - equivalent); "no tests" mutants count as not killed. Target: >= 85 %.
``--check`` exits non-zero when a module is under the target or has a survivor without a verdict (CI).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "mutation"
WORK = ROOT / ".mutation"
RESULTS = HERE / "results"
REPORT = HERE / "report.md"
VERDICTS = HERE / "verdicts.toml"
MUTMUT = Path(sys.executable).with_name("mutmut")
TARGET = 0.85

# The core modules of issue #17: files, or folders meaning every module in them but those of ``NOT_CORE`` (so a new
# callback or evaluation function is found without editing this list).
CORE = (
    "src/dnlseg/context",
    "src/dnlseg/models/losses.py",
    "src/dnlseg/models/heads",
    "src/dnlseg/evaluation",
    "src/dnlseg/analysis",
    "src/dnlseg/data/transforms.py",
    "src/dnlseg/data/folder.py",
    "src/dnlseg/callbacks",
    "src/dnlseg/models/sync_batchnorm.py",
    "src/dnlseg/checkpoints/checkpoint_io.py",
    # split out of checkpoint_io.py (weight-file reading and the state-dict fit check)
    "src/dnlseg/checkpoints/weight_files.py",
)
# Modules of a CORE folder left out: drawing figures and reading TensorBoard files (checked by their tests, not
# mutated); the heads' base, declarations without a function body (mutmut mutates none: "0 files mutated").
NOT_CORE = (
    "src/dnlseg/analysis/attention_figure.py",
    "src/dnlseg/analysis/tensorboard_scalars.py",
    "src/dnlseg/models/heads/base.py",
)
# Fast tests of a module beyond its mirrored test file; a folder's entry applies to every module in it.
EXTRA_TESTS = {
    "src/dnlseg/context": ("tests/context",),  # the block contract suite runs every block and option
    # the heads' mmseg parity (eval and fp64 training) and ContextHead's layout (heads.py's tests before the split)
    "src/dnlseg/models/heads": (
        "tests/models/heads",
        "tests/models/test_network.py",
        "tests/models/test_mmseg_heads.py",
        "tests/models/test_heads.py",
    ),
    "src/dnlseg/evaluation/metrics.py": ("tests/evaluation/test_cityscapes_parity.py",),
    "src/dnlseg/data/folder.py": (
        "tests/data/test_cityscapes.py",
        "tests/data/test_ade20k.py",
        "tests/data/test_image_mask.py",
        "tests/data/test_voc.py",
    ),
    "src/dnlseg/checkpoints/checkpoint_io.py": ("tests/test_reliability/test_atomic_checkpoint.py",),
}
# Folders the tests of a module (or folder) read beside src/ and tests/, copied into mutmut's sandbox: the heads'
# mmseg parity tests build each head as its recipe in configs/ says.
ALSO_COPY = {"src/dnlseg/models/heads": ("configs",)}
# Tests left out of a module's (or folder's) mutant runs, as a pytest -k expression: the contract suite's float64
# gradchecks take 265 of its 294 s (per surviving mutant) and their gradients are also compared, fused against
# materialised, by test_fused_equals_materialized_outputs_and_gradients. A mutant only they would kill counts as a
# survivor, so the score is a lower bound.
DESELECT = {"src/dnlseg/context": "not gradcheck"}
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not slow", "-W", "ignore"]
COUNTED = ("killed", "timeout", "survived", "no tests", "suspicious", "segfault")


def core_modules() -> list[str]:
    """Every module of ``CORE``, folders expanded (``__init__.py`` files hold no logic and are left out, and so is
    ``NOT_CORE``)."""
    modules = []
    for entry in CORE:
        path = ROOT / entry
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        modules += [str(f.relative_to(ROOT)) for f in files if f.name != "__init__.py"]
    return [m for m in modules if m not in NOT_CORE]


def tests_for(module: str) -> list[str]:
    """The module's fast tests: ``tests/<path>/test_<name>.py`` and ``tests/callbacks/test_<name>.py`` (those that
    exist) and ``EXTRA_TESTS`` (the module's and its folder's)."""
    relative = Path(module).relative_to("src/dnlseg")
    mirrored = Path("tests") / relative.parent / f"test_{relative.name}"
    callback = Path("tests/callbacks") / f"test_{relative.name}"  # an evaluation function tested through its callback
    tests = [str(t) for t in dict.fromkeys((mirrored, callback)) if (ROOT / t).exists()]
    extra = [t for entry, more in EXTRA_TESTS.items() if entry in (module, str(Path(module).parent)) for t in more]
    return tests + [t for t in extra if t not in tests]


def deselected(module: str) -> str | None:
    """The module's (or its folder's) ``DESELECT`` expression, if any."""
    return DESELECT.get(module, DESELECT.get(str(Path(module).parent)))


def pytest_args(module: str) -> list[str]:
    keep = deselected(module)
    return tests_for(module) + PYTEST_ARGS + (["-k", keep] if keep else [])


def slug(module: str) -> str:
    return Path(module).relative_to("src/dnlseg").with_suffix("").as_posix().replace("/", ".")


def function_of(mutant: str) -> str:
    """``dnlseg.models.losses.xǁSegmentationLossǁhard_pixels__mutmut_9`` -> ``SegmentationLoss.hard_pixels``."""
    name = mutant.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
    if name.startswith("xǁ"):
        return ".".join(part for part in name[2:].split("ǁ") if part)
    return name.removeprefix("x_")


# --- running mutmut ------------------------------------------------------------------------------------------
def prepare(module: str, fresh: bool) -> Path:
    """The module's mutmut work folder with symlinks to src/ and tests/ and a pyproject.toml configuring mutmut."""
    work = WORK / slug(module)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    also = ALSO_COPY.get(module, ALSO_COPY.get(str(Path(module).parent), ()))
    for name in ("src", "tests", *also):
        if not (work / name).is_symlink():
            (work / name).symlink_to(ROOT / name, target_is_directory=True)
    selection = ", ".join(json.dumps(a) for a in pytest_args(module))
    config = (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        + (f"also_copy = [{', '.join(json.dumps(a) for a in also)}]\n" if also else "")
        + f"only_mutate = [{json.dumps(module)}]\n"
        f"pytest_add_cli_args_test_selection = [{selection}]\n"
        'process_isolation = "forkserver"  # torch is not fork-safe after its thread pools started\n'
    )
    text = (ROOT / "pyproject.toml").read_text() + config
    if not (work / "pyproject.toml").exists() or (work / "pyproject.toml").read_text() != text:
        (work / "pyproject.toml").write_text(text)
    return work


def mutmut(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(MUTMUT), *args], cwd=work, env=env, capture_output=True, text=True)


def exit_codes(work: Path, module: str) -> dict[str, int | None]:
    meta = work / "mutants" / f"{module}.meta"
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def mutated_lines(work: Path, mutant: str) -> tuple[str, str]:
    """(original line, mutated line) of a mutant, from ``mutmut show``."""
    diff = mutmut(work, "show", mutant).stdout.splitlines()
    removed = [line[1:].strip() for line in diff if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(removed), " / ".join(added)


def run_module(module: str, max_children: int, fresh: bool) -> dict:
    """Run mutmut on ``module``; returns its result (the JSON written to mutation/results/)."""
    from mutmut.stats import status_by_exit_code

    work = prepare(module, fresh)
    previous = exit_codes(work, module)
    again = [name for name, code in previous.items() if status_by_exit_code[code] in ("survived", "no tests")]
    start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)

    def run(*names: str) -> None:
        result = mutmut(work, "run", "--max-children", str(max_children), *names)
        if result.returncode != 0:
            sys.exit(f"mutmut failed on {module} in {work}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    if not previous:
        run()
    elif again:
        run(*again)  # the survivors of the last run against today's tests
    if any(code is None for code in exit_codes(work, module).values()):
        run()  # new and changed mutants, and any result mutmut reset (a changed test selection resets them all)
    cpu_end = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_end.ru_utime + cpu_end.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime
    codes = exit_codes(work, module)
    counts = {status: 0 for status in COUNTED}
    survivors = []
    for name, code in sorted(codes.items()):
        status = status_by_exit_code[code]
        counts[status] = counts.get(status, 0) + 1
        if status in ("survived", "no tests", "suspicious"):
            original, mutated = mutated_lines(work, name)
            survivors.append(
                {
                    "mutant": name,
                    "status": status,
                    "function": function_of(name),
                    "original": original,
                    "mutated": mutated,
                }
            )
    return {
        "module": module,
        "tests": tests_for(module),
        "deselected": deselected(module),
        "mutants": len(codes),
        "counts": counts,
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(cpu, 1),
        "max_children": max_children,
        "incremental": bool(previous),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": git("rev-parse", "--short", "HEAD"),  # the code measured (the module is never edited uncommitted)
        "survivors": survivors,
    }


def git(*args: str) -> str:
    """git's output, or "" where there is no git or no history (e.g. a CI checkout of a tarball)."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def measured_on(result: dict) -> tuple[str, bool]:
    """(commit, stale): the commit a result was measured on -- for results written before the field existed, the
    commit that added the result file -- and whether the module changed between it and HEAD."""
    commit = result.get("commit") or git(
        "log", "-1", "--format=%h", "--", f"mutation/results/{slug(result['module'])}.json"
    )
    if not commit:
        return "commit unknown", False
    changed = subprocess.run(
        ["git", "diff", "--quiet", commit, "HEAD", "--", result["module"]], cwd=ROOT, capture_output=True
    ).returncode
    return commit, changed == 1  # 1: differs; 0: same; other: git could not tell


# --- verdicts and the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    kind: str  # "equivalent" or "accepted"
    why: str


def load_verdicts() -> dict[tuple[str, str, str], Verdict]:
    entries = tomllib.loads(VERDICTS.read_text()).get("survivor", []) if VERDICTS.exists() else []
    verdicts = {}
    for entry in entries:
        if entry["verdict"] not in ("equivalent", "accepted"):
            sys.exit(f"{VERDICTS}: verdict={entry['verdict']!r} must be 'equivalent' or 'accepted' ({entry})")
        verdicts[(entry["module"], entry["function"], entry["mutated"])] = Verdict(entry["verdict"], entry["why"])
    return verdicts


def key(module: str, survivor: dict) -> tuple[str, str, str]:
    return module, survivor["function"], survivor["mutated"]


def score(result: dict, verdicts: dict) -> tuple[float, int]:
    """(score, equivalent mutants) of one module's result."""
    equivalent = sum(
        verdicts.get(key(result["module"], s), Verdict("", "")).kind == "equivalent" for s in result["survivors"]
    )
    killed = result["counts"]["killed"] + result["counts"]["timeout"]
    considered = result["mutants"] - equivalent
    return (killed / considered if considered else 1.0), equivalent


def merge_killed_since(result: dict, old: dict | None) -> dict:
    """Carry over the earlier survivors that today's tests kill (``killed_by_new_tests``)."""
    now = {(s["function"], s["mutated"]) for s in result["survivors"]}
    killed = list(old.get("killed_by_new_tests", [])) if old else []
    for s in old.get("survivors", []) if old else []:
        if (s["function"], s["mutated"]) not in now and s not in killed:
            killed.append({k: s[k] for k in ("function", "original", "mutated")})
    result["killed_by_new_tests"] = [k for k in killed if (k["function"], k["mutated"]) not in now]
    return result


def write_report(results: list[dict], verdicts: dict) -> list[str]:
    """Write report.md; returns the problems ``--check`` fails on."""
    problems = []
    lines = [
        "# Mutation testing report",
        "",
        "Written by `mutation/run.py` (`make mutation`; one module: `make mutation MODULE=<path>`): mutmut 3.x on each",
        'module with its fast tests (`-m "not slow"`). score = (killed + timeout) / (mutants - equivalent); target'
        f" >= {TARGET:.0%}. Verdicts of surviving mutants: `mutation/verdicts.toml`. Times: wall and CPU seconds of",
        "the mutmut processes on the machine that ran them (the date says when; noisy on a shared CPU). run: when,",
        "full or incremental, and the commit measured; **stale** marks a result whose module changed after that",
        "commit (the last measured figure, kept until a fresh run). Context modules' runs leave out the contract",
        'suite\'s float64 gradchecks (`-k "not gradcheck"`, mutation/run.py DESELECT): their scores are lower bounds.',
        "",
        "| module | mutants | killed | timeout | survived | no tests | equivalent | score | wall s | CPU s | run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    total = {"mutants": 0, "killed": 0, "equivalent": 0, "wall": 0.0, "cpu": 0.0}
    for r in results:
        value, equivalent = score(r, verdicts)
        c = r["counts"]
        mode = "incremental" if r["incremental"] else "full"
        commit, stale = measured_on(r)
        mode += f", {commit}" + (" **(code changed since: stale)**" if stale else "")
        lines.append(
            f"| `{r['module']}` | {r['mutants']} | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} "
            f"| {equivalent} | **{value:.1%}** | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['date']}, {mode} |"
        )
        total["mutants"] += r["mutants"]
        total["killed"] += c["killed"] + c["timeout"]
        total["equivalent"] += equivalent
        total["wall"] += r["wall_s"]
        total["cpu"] += r["cpu_s"]
        if value < TARGET:
            problems.append(f"{r['module']}: score {value:.1%} < {TARGET:.0%}")
    measured = {r["module"] for r in results}
    lines += [f"| `{m}` | not measured yet | | | | | | | | | |" for m in core_modules() if m not in measured]
    if results:
        considered = total["mutants"] - total["equivalent"]
        lines.append(
            f"| all | {total['mutants']} | {total['killed']} | | | | {total['equivalent']} "
            f"| **{total['killed'] / max(considered, 1):.1%}** | {total['wall']:.0f} | {total['cpu']:.0f} | |"
        )
    for r in results:
        if not r["survivors"] and not r.get("killed_by_new_tests"):
            continue
        chosen = ", ".join(f"`{t}`" for t in r["tests"])
        if r.get("deselected"):
            chosen += f' (`-k "{r["deselected"]}"`)'
        lines += ["", f"## `{r['module']}`", "", f"Tests: {chosen}.", ""]
        if r["survivors"]:
            lines += ["| function | mutation | status | verdict |", "|---|---|---|---|"]
        for s in r["survivors"]:
            verdict = verdicts.get(key(r["module"], s))
            if verdict is None:
                text = "**TODO**: no verdict yet (a test gap)"
                problems.append(f"{r['module']}: {s['mutant']} ({s['function']}: {s['mutated']}) has no verdict")
            else:
                text = f"{verdict.kind}: {verdict.why}"
            change = f"`{s['original']}` -> `{s['mutated']}`".replace("|", "\\|")
            lines.append(f"| `{s['function']}` | {change} | {s['status']} | {text} |")
        killed = r.get("killed_by_new_tests", [])
        if killed:
            lines += ["", f"Killed by a new test (survivors of an earlier run): {len(killed)}", ""]
            lines += [f"- `{k['function']}`: `{k['original']}` -> `{k['mutated']}`" for k in killed]
    REPORT.write_text("\n".join(lines) + "\n")
    return problems


def load_results() -> list[dict]:
    order = {m: i for i, m in enumerate(core_modules())}
    results = [json.loads(p.read_text()) for p in RESULTS.glob("*.json")]
    return sorted(results, key=lambda r: order.get(r["module"], len(order)))


def selected(module: str | None) -> list[str]:
    if module is None:
        return core_modules()
    path = Path(module)
    chosen = [m for m in core_modules() if Path(m) == path or path in Path(m).parents]
    if not chosen:
        known = "\n  ".join(core_modules())
        sys.exit(f"MODULE={module} is not a core module (or a folder of them); core modules:\n  {known}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", help="one core module or folder (default: all of CORE)")
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--fresh", action="store_true", help="delete the module's mutmut work folder first")
    parser.add_argument("--report", action="store_true", help="only rebuild report.md from mutation/results/")
    parser.add_argument("--check", action="store_true", help="exit 1 if a module misses the target or a verdict")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for module in selected(args.module):
            print(f"mutmut: {module} with {' '.join(pytest_args(module))}", flush=True)
            path = RESULTS / f"{slug(module)}.json"
            # After --fresh the earlier survivors are of other code: only an incremental run credits new tests.
            old = json.loads(path.read_text()) if path.exists() and not args.fresh else None
            result = merge_killed_since(run_module(module, args.max_children, args.fresh), old)
            path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
            c = result["counts"]
            print(
                f"  {result['mutants']} mutants: {c['killed']} killed, {c['timeout']} timeout, "
                f"{c['survived']} survived, {c['no tests']} no tests; {result['wall_s']:.0f} s",
                flush=True,
            )
    problems = write_report(load_results(), load_verdicts())
    if args.module:  # --check judges the modules it ran
        problems = [p for p in problems if p.split(":")[0] in selected(args.module)]
    print(f"wrote {REPORT.relative_to(ROOT)}")
    for problem in problems:
        print("  " + problem)
    if args.check and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
