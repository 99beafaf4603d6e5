"""Step-time overhead of the gradient-separation callbacks (``BranchGradientMonitor`` at every step, and with
``SeparationProbe``) on a training config, the variants' short fits interleaved round by round from the same weights.

    make bench-callbacks                                             # synthetic DNL -> callback_overhead.md
    .venv/bin/python benchmarks/callback_overhead.py --steps 60 --repeats 5 --config configs/synthetic/nl.yaml

A step is ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, callbacks, optimiser, logging); the
first ``--warmup`` steps of each fit are left out, and the overhead is the ratio of the median steps.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
from _measure import benchmark_parser, markdown_table, parse, write_report
from lightning.pytorch.loggers import TensorBoardLogger

from dnlseg.callbacks import BranchGradientMonitor, SeparationProbe
from dnlseg.cli.lightning_cli import run_cli


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


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"), device=False)
    parser.add_argument("--config", default="configs/synthetic/dnl.yaml")
    parser.add_argument("--steps", type=int, default=40, help="training steps per fit")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each fit left out")
    parser.add_argument("--probe-every", type=int, default=50)
    args = parse(parser, argv)
    repeats = args.repeats or (1 if args.quick or args.tiny else 3)
    if args.tiny:
        args.steps, args.warmup, args.probe_every = 3, 1, 2
    overrides = ["--trainer.logger=false", "--trainer.callbacks=[]"]
    if args.tiny:
        overrides += [
            "--model.network.head_channels=16",
            "--model.network.aux_channels=8",
            "--data.init_args.image_size=32",
        ]
    cli = run_cli(["-c", args.config, *overrides], run=False)
    initial = copy.deepcopy(cli.model.state_dict())
    variants = {
        "none": list,
        "monitor": lambda: [BranchGradientMonitor(every_n_steps=1)],
        "monitor + probe": lambda: [
            BranchGradientMonitor(every_n_steps=1),
            SeparationProbe(every_n_steps=args.probe_every),
        ],
    }
    steps: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as logdir:
        for round_ in range(repeats):
            for name, callbacks in variants.items():
                cli.model.load_state_dict(initial)
                L.seed_everything(round_, verbose=False)
                timer = fit_steps(cli.model, cli.datamodule, callbacks(), args.steps, logdir)
                steps[name] += list(zip(timer.wall, timer.cpu, strict=True))[args.warmup :]
    medians = {name: tuple(statistics.median(s) for s in zip(*runs, strict=True)) for name, runs in steps.items()}
    (base_wall, base_cpu) = medians["none"]
    rows = [
        [
            name,
            f"{wall:.3f}",
            f"{100 * (wall / base_wall - 1):+.1f}%",
            f"{cpu:.3f}",
            f"{100 * (cpu / base_cpu - 1):+.1f}%",
        ]
        for name, (wall, cpu) in medians.items()
    ]
    lines = args.run.header("Gradient-callback overhead")
    lines += [
        f"- config `{args.config}`; {repeats} interleaved rounds x {args.steps} steps per variant, first "
        f"{args.warmup} of each fit left out: medians over {len(steps['none'])} steps per variant",
        "",
        *markdown_table(
            ["callbacks", "median step wall s", "wall overhead", "median step CPU s", "CPU overhead"], rows
        ),
    ]
    write_report(lines, args.output)
    return medians


if __name__ == "__main__":
    main()
