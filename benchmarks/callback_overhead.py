"""Step-time overhead of the gradient-separation callbacks on a training config (default: synthetic DNL).

    .venv/bin/python benchmarks/callback_overhead.py                     # writes benchmarks/callback_overhead.md
    .venv/bin/python benchmarks/callback_overhead.py --steps 60 --rounds 5 --config configs/synthetic/nl.yaml

The config's model and data are built once through the dnlseg CLI (``run_cli(run=False)``); then, per round,
three short fits from the same initial weights run back to back (interleaved, so a busy machine slows every
variant alike), each with a TensorBoard logger in a temporary folder and nothing else but a step timer:

- ``none``: no gradient callback;
- ``monitor``: ``BranchGradientMonitor(every_n_steps=1)`` -- the issue's target is <= 5% of step time;
- ``monitor + probe``: plus ``SeparationProbe`` at the config's interval (default 50 steps).

A step's wall and CPU time are from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward,
callbacks, optimiser step, logging). The first ``--warmup`` steps of each fit are dropped; the table reports the median
over the remaining steps of all rounds, and the overhead as the ratio of medians.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from dnlseg.callbacks import BranchGradientMonitor, SeparationProbe
from dnlseg.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    """Wall and CPU (process) time of each training step (batch start -> batch end)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def fit_steps(module, datamodule, callbacks: list[L.Callback], steps: int, logdir: str) -> StepTimer:
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=TensorBoardLogger(logdir, name="overhead"),
        log_every_n_steps=10,
        callbacks=[timer, *callbacks],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
    )
    trainer.fit(module, datamodule=datamodule)
    return timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/synthetic/dnl.yaml")
    parser.add_argument("--steps", type=int, default=40, help="training steps per fit")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each fit left out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probe-every", type=int, default=50)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "callback_overhead.md"))
    args = parser.parse_args()

    cli = run_cli(["-c", args.config, "--trainer.logger=false", "--trainer.callbacks=[]"], run=False)
    initial = copy.deepcopy(cli.model.state_dict())
    variants = {
        "none": list,
        "monitor": lambda: [BranchGradientMonitor(every_n_steps=1)],
        "monitor + probe": lambda: [
            BranchGradientMonitor(every_n_steps=1),
            SeparationProbe(every_n_steps=args.probe_every),
        ],
    }
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as logdir:
        for round_ in range(args.rounds):
            for name, callbacks in variants.items():
                cli.model.load_state_dict(initial)
                L.seed_everything(round_, verbose=False)
                timer = fit_steps(cli.model, cli.datamodule, callbacks(), args.steps, logdir)
                wall[name].extend(timer.wall[args.warmup :])
                cpu[name].extend(timer.cpu[args.warmup :])
                print(f"round {round_} {name:16s} median {statistics.median(timer.wall[args.warmup :]):.3f} s wall")

    base_wall, base_cpu = statistics.median(wall["none"]), statistics.median(cpu["none"])
    lines = [
        "# Gradient-callback overhead",
        "",
        f"Generated {datetime.date.today()} by `python benchmarks/callback_overhead.py"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads.",
        "",
        f"Config `{args.config}`; {args.rounds} interleaved rounds x {args.steps} steps per variant, "
        f"first {args.warmup} steps of each fit left out; medians over {len(wall['none'])} steps per variant. "
        "CPU time is the process's (all its threads); on a machine shared with other jobs it is the steadier "
        "of the two.",
        "",
        "| callbacks | median step wall (s) | wall overhead | median step CPU (s) | CPU overhead |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in variants:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        lines.append(
            f"| {name} | {w:.3f} | {100 * (w / base_wall - 1):+.1f}% | {c:.3f} | {100 * (c / base_cpu - 1):+.1f}% |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    Path(args.output).write_text(report)


if __name__ == "__main__":
    main()
