"""The plumbing every experiment shares: a ``dnlseg`` command in a fresh process, and the report's machine line.

The experiments import it as ``_runner`` (each script puts ``experiments/`` on ``sys.path``, as the benchmarks do
with ``_measure``).
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def dnlseg_command(subcommand: str, *args: str) -> list[str]:
    """``python -m dnlseg <subcommand> <args>`` with this interpreter (the checkout's venv)."""
    return [sys.executable, "-m", "dnlseg", subcommand, *args]


def fit_args(config: Path | Sequence[Path], save_dir: Path, name: str, version: str, *extra: str) -> list[str]:
    """The arguments of ``dnlseg fit`` that put a run's logs in ``save_dir/name/version`` without a progress bar.

    ``config``: one YAML file or several (later files override earlier ones, as repeated ``-c`` do).
    """
    configs = [config] if isinstance(config, (str, Path)) else list(config)
    return [
        *(a for c in configs for a in ("-c", str(c))),
        f"--trainer.logger.init_args.save_dir={save_dir}",
        f"--trainer.logger.init_args.name={name}",
        f"--trainer.logger.init_args.version={version}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]


def run(
    cmd: Sequence[str],
    threads: int = 0,
    quiet: bool = False,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
) -> float:
    """Run ``cmd`` in ROOT (printed first, as ``$ ...``), raise on a non-zero exit; returns its wall time in s.

    Args:
        cmd: the command line.
        threads: > 0 sets OMP_NUM_THREADS for it (parallel fits share the cores).
        quiet: drop its stdout (parallel fits would interleave it).
        env: the whole environment instead of this process's.
        capture: capture stdout and stderr (shown in the error if it fails) instead of passing them through.
    """
    environment = dict(os.environ if env is None else env)
    if threads > 0:
        environment["OMP_NUM_THREADS"] = str(threads)
    print("$", shlex.join(cmd), flush=True)
    start = time.perf_counter()
    if capture:
        done = subprocess.run(cmd, cwd=ROOT, env=environment, capture_output=True, text=True)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
    else:
        subprocess.run(cmd, check=True, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL if quiet else None)
    return time.perf_counter() - start


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_line(threads: int | None = None) -> str:
    """``<cpu>, <cores> cores, <threads> threads, torch <version>, <date>``: where a report's numbers come from."""
    threads = torch.get_num_threads() if threads is None else threads
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads, "
        f"torch {torch.__version__}, {date.today().isoformat()}"
    )


def shown(path: Path) -> str:
    """``path`` relative to the checkout when it lies inside it (reports read the same on every machine)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
