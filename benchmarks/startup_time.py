"""Start-up time of the ``dnlseg`` command: ``dnlseg --help`` and ``dnlseg fit -c <config> --print_config``.

    .venv/bin/python benchmarks/startup_time.py                       # writes benchmarks/startup_time.md
    git archive main | tar -x -C /tmp/main                            # another checkout's sources, e.g. main ...
    .venv/bin/python benchmarks/startup_time.py --baseline-src /tmp/main/src   # ... measured against this one

Each command runs as ``python -m dnlseg ...`` in a fresh interpreter (what the console script does), in this
checkout with its ``src`` first on ``PYTHONPATH`` (or in the baseline's), ``--repeats`` rounds, the variants interleaved
within a round. The table gives the median wall time and the median CPU time (user + system) of the child
process; on a machine shared with other jobs the CPU time is the steadier figure. ``import lightning.pytorch``
alone is measured too: the floor no dnlseg change can go below for a command that builds a LightningCLI.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _measure import cpu_model, write_report  # the parent process only: the measured children do not import it

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "dnlseg --help": ["-m", "dnlseg", "--help"],
    "dnlseg fit -c configs/synthetic/dnl.yaml --print_config": [
        "-m",
        "dnlseg",
        "fit",
        "-c",
        "configs/synthetic/dnl.yaml",
        "--print_config",
    ],
    "python -c 'import lightning.pytorch' (floor)": ["-c", "import lightning.pytorch"],
}


def timed_run(args: list[str], src: Path) -> tuple[float, float]:
    """(wall s, CPU s of the child) of ``python ARGS`` in the checkout of ``src`` (its configs), ``src`` first on
    PYTHONPATH."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=src.parent, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> dict[tuple[str, str], tuple[float, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (median over them), after one warmup round")
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to compare with")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "startup_time.md")
    args = parser.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    variants = {"this checkout": ROOT / "src"}
    if args.baseline_src is not None:
        variants = {f"baseline ({args.baseline_src})": args.baseline_src, **variants}
    load = os.getloadavg()[0]
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(args.repeats + 1):  # round 0 warms the file cache
        for command, command_args in COMMANDS.items():
            for variant, src in variants.items():
                if "floor" in command and variant != "this checkout":
                    continue
                result = timed_run(command_args, src)
                if round_:
                    samples.setdefault((command, variant), []).append(result)
    medians = {
        key: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
        for key, runs in samples.items()
    }
    lines = [
        "# Start-up time of the dnlseg command",
        "",
        f"- command: `{' '.join([os.path.relpath(sys.executable), 'benchmarks/startup_time.py', *given])}`",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}",
        f"- 1-min load average: {load:.2f} before, {os.getloadavg()[0]:.2f} after (other jobs on the CPUs slow "
        "the wall times; CPU time is the steadier figure)",
        f"- median of {args.repeats} interleaved rounds after one warmup round",
        "",
        "| command | sources | wall s | CPU s |",
        "|---|---|---:|---:|",
        *[f"| `{command}` | {variant} | {w:.2f} | {c:.2f} |" for (command, variant), (w, c) in medians.items()],
        "",
    ]
    write_report("\n".join(lines), args.output)
    return medians


if __name__ == "__main__":
    main()
