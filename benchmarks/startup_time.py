"""Start-up time of the ``dnlseg`` command (``dnlseg --help``, ``dnlseg fit -c <config> --print_config``) in fresh
interpreters, against another checkout's sources with ``--baseline-src``, and ``import lightning.pytorch`` alone:
the floor of any command that builds a LightningCLI.

    make bench-startup                                                # -> benchmarks/startup_time.md
    git archive main src configs | tar -x -C /tmp/main                # another checkout's sources, e.g. main ...
    .venv/bin/python benchmarks/startup_time.py --baseline-src /tmp/main/src   # ... measured against this one
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

# The parent process only: the measured children do not import it.
from _measure import ROOT, benchmark_parser, environment, markdown_table, parse, run, write_report

COMMANDS = {
    "dnlseg --help": ["-m", "dnlseg", "--help"],
    "dnlseg fit -c configs/synthetic/dnl.yaml --print_config": [
        *("-m", "dnlseg", "fit", "-c", "configs/synthetic/dnl.yaml", "--print_config"),
    ],
    "python -c 'import lightning.pytorch' (floor)": ["-c", "import lightning.pytorch"],
}


def main(argv: list[str] | None = None) -> dict[tuple[str, str], tuple[float, float]]:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"), device=False)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to compare with")
    args = parse(parser, argv)
    repeats = args.repeats or (1 if args.quick or args.tiny else 5)
    sources = {"this checkout": ROOT / "src"}
    if args.baseline_src is not None:
        sources = {f"baseline ({args.baseline_src})": args.baseline_src, **sources}
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_ in range(repeats + 1):  # round 0 warms the file cache
        for command, command_args in COMMANDS.items():
            for label, src in sources.items():
                if "floor" in command and label != "this checkout":
                    continue
                child = run([sys.executable, *command_args], cwd=src.parent, env=environment(src), output="drop")
                if round_:
                    samples.setdefault((command, label), []).append((child.wall, child.cpu))
    medians = {key: tuple(statistics.median(s) for s in zip(*runs, strict=True)) for key, runs in samples.items()}
    rows = [[f"`{command}`", label, f"{w:.2f}", f"{c:.2f}"] for (command, label), (w, c) in medians.items()]
    lines = args.run.header("Start-up time of the dnlseg command")
    lines += [f"- median of {repeats} interleaved rounds after one warmup round; CPU: the child's user + system", ""]
    write_report(lines + markdown_table(["command", "sources", "wall s", "CPU s"], rows), args.output)
    return medians


if __name__ == "__main__":
    main()
