"""Resolution scaling of the context blocks: forward + backward time and peak memory from P = 1024 to 32768
positions, fused vs materialised attention, NL vs DNL, with a log-log plot.

Run from the repository root:

    make bench                                                   # the whole suite, CPU-sized defaults
    .venv/bin/python benchmarks/resolution_scaling.py            # N=1, P = 1024 ... 32768 (CPU default)
    .venv/bin/python benchmarks/resolution_scaling.py --paper    # N=2 (batch 2 per device)
    .venv/bin/python benchmarks/resolution_scaling.py --device cuda --precision bf16-mixed \\
        --output benchmarks/resolution_scaling_cuda.md

At each P every configuration (DNL/NL x fused/materialised) runs once as a warmup, once under the memory probe,
then ``--repeats`` interleaved rounds time them. The blocks are those of
``benchmarks/context_blocks.py`` (C=512, C'=256, train mode, output-norm weight set to ones so the gradient
reaches every branch). A materialised configuration whose (P, P) maps would need more than
``--max-materialized-gib`` (or more than the free memory less 2 GiB) is skipped and marked so. At the largest P
an inference forward (eval, no_grad) of DNL measures the fused/materialised memory ratio, which the
training-step maps may not fit. Memory: as in ``context_blocks.py`` (``_measure.measure_memory``).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import torch
from _measure import (
    PRECISIONS,
    GiB,
    Memory,
    MiB,
    RunClock,
    Timing,
    add_common_arguments,
    autocast,
    available_bytes,
    figure_path,
    finish_arguments,
    interleaving_line,
    machine_lines,
    markdown_table,
    measure_memory,
    mib,
    time_round_robin,
    write_report,
)
from context_blocks import ATTENTIONS, BLOCKS, CHANNELS, SEED, TrainStep, make_block, materialized_inference_bytes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GRIDS = [(32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]  # P = 1024 ... 32768
TINY_GRIDS = [(8, 8), (8, 16), (16, 16)]
TARGET_MEMORY_RATIO = 1 / 20  # fused / materialised DNL memory at P = 32768, from the project's issue
FIT_FROM = 4096  # growth exponents are fitted on P >= FIT_FROM, where the attention dominates the fixed costs


def materialized_training_bytes(batch: int, positions: int) -> int:
    """About four fp32 (P, P) maps per image are live in a materialised fwd+bwd (measured: 3.3 at P = 9409)."""
    return 4 * batch * positions**2 * 4


@dataclass
class Cell:
    kind: str
    attention: str
    grid: tuple[int, int]
    timing: Timing | None = None
    memory: Memory | None = None
    skipped: str = ""

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]


@dataclass
class Results:
    train: list[Cell] = field(default_factory=list)
    inference: list[Cell] = field(default_factory=list)


def skip_reason(need: int, args: argparse.Namespace) -> str:
    free = available_bytes(args.device)
    if need > args.max_materialized_gib * GiB:
        return f"skipped (needs ~{need / GiB:.0f} GiB > --max-materialized-gib {args.max_materialized_gib:g})"
    if need + 2 * GiB > free:
        return f"skipped (needs ~{need / GiB:.0f} GiB + 2 GiB headroom, {free / GiB:.1f} GiB free)"
    return ""


def bench_grid(grid: tuple[int, int], args: argparse.Namespace) -> list[Cell]:
    device = args.device
    torch.manual_seed(SEED)
    x = torch.randn(args.batch, CHANNELS, *grid, device=device, requires_grad=True)  # (N, C, H, W)
    grad_out = torch.randn_like(x)
    cells, calls = [], {}
    for kind in BLOCKS:
        for attention in ATTENTIONS:
            cell = Cell(kind, attention, grid)
            cells.append(cell)
            if attention == "materialized":
                cell.skipped = skip_reason(materialized_training_bytes(args.batch, cell.positions), args)
            if cell.skipped:
                continue
            step = TrainStep(make_block(kind, attention, device), x, grad_out)

            def call(step=step) -> None:
                with autocast(args.device, args.precision):
                    step()

            call()  # warmup: kernels' first-call set-up is neither timed nor counted
            step.clear_grads()
            cell.memory = measure_memory(call, device)
            step.clear_grads()
            calls[(kind, attention)] = call
            print(f"  P={cell.positions} {kind} {attention}: {cell.memory.extra_peak / MiB:,.0f} MiB", flush=True)
    timings = time_round_robin(calls, args.repeats, device)
    for cell in cells:
        cell.timing = timings.get((cell.kind, cell.attention))
    return cells


def bench_inference(grid: tuple[int, int], args: argparse.Namespace) -> list[Cell]:
    """DNL forward at the largest grid, eval + no_grad, N=1: memory only (one run each)."""
    x = torch.randn(1, CHANNELS, *grid, device=args.device)
    cells = []
    for attention in ATTENTIONS:
        cell = Cell("DNL", attention, grid)
        cells.append(cell)
        if attention == "materialized":
            cell.skipped = skip_reason(materialized_inference_bytes(cell.positions), args)
        if cell.skipped:
            continue
        block = make_block("DNL", attention, args.device).eval()

        def forward(block=block) -> None:
            with torch.no_grad(), autocast(args.device, args.precision):
                block(x)  # (1, C, H, W) -> (1, C, H, W), dropped

        cell.memory = measure_memory(forward, args.device)
        print(f"  inference P={cell.positions} DNL {attention}: {cell.memory.extra_peak / MiB:,.0f} MiB", flush=True)
    return cells


def fitted_cells(cells: list[Cell]) -> list[Cell]:
    """The measured cells the growth exponents are fitted on: P >= FIT_FROM, where the attention's cost
    dominates the fixed costs (all measured cells when fewer than two are that large, e.g. ``--tiny``)."""
    measured = [c for c in cells if not c.skipped]
    large = [c for c in measured if c.positions >= FIT_FROM]
    return large if len(large) >= 2 else measured


def slope(cells: list[Cell], value) -> float | None:
    """Least-squares exponent b of value ~ P^b over the cells (log-log)."""
    points = [(math.log(c.positions), math.log(value(c))) for c in cells if value(c) > 0]
    if len(points) < 2:
        return None
    mx = sum(p for p, _ in points) / len(points)
    my = sum(v for _, v in points) / len(points)
    return sum((p - mx) * (v - my) for p, v in points) / sum((p - mx) ** 2 for p, _ in points)


def series(results: Results) -> dict[tuple[str, str], list[Cell]]:
    out: dict[tuple[str, str], list[Cell]] = {}
    for cell in results.train:
        out.setdefault((cell.kind, cell.attention), []).append(cell)
    return out


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def scaling_table(results: Results) -> list[str]:
    short = {"fused": "fused", "materialized": "mat."}
    header = ["P (H x W)"] + [f"{k} {short[a]} {q}" for k in BLOCKS for a in ATTENTIONS for q in ("s", "MiB")]
    header += [f"{k} memory fused/mat." for k in BLOCKS]
    by_grid: dict[tuple[int, int], dict[tuple[str, str], Cell]] = {}
    for cell in results.train:
        by_grid.setdefault(cell.grid, {})[(cell.kind, cell.attention)] = cell
    rows = []
    for grid, cells in by_grid.items():
        row = [f"{grid[0] * grid[1]} ({grid[0]} x {grid[1]})"]
        for kind in BLOCKS:
            for attention in ATTENTIONS:
                c = cells[(kind, attention)]
                row += (
                    ["skipped", c.skipped.removeprefix("skipped ")]
                    if c.skipped
                    else [
                        f"{c.timing.wall:.3f}",
                        mib(c.memory.extra_peak),
                    ]
                )
        for kind in BLOCKS:
            fused, mat = cells[(kind, "fused")], cells[(kind, "materialized")]
            row.append("-" if mat.skipped else f"{fused.memory.extra_peak / mat.memory.extra_peak:.3f}")
        rows.append(row)
    return markdown_table(header, rows)


def slope_lines(results: Results) -> list[str]:
    lines = []
    for (kind, attention), cells in series(results).items():
        cells = fitted_cells(cells)
        memory = slope(cells, lambda c: c.memory.extra_peak)
        time = slope(cells, lambda c: c.timing.wall)
        if memory is None:
            continue
        measured = [c.positions for c in cells]
        lines.append(
            f"- {kind} {attention}: memory ~ P^{memory:.2f}, time ~ P^{time:.2f} "
            f"(least squares on log-log, P = {measured[0]} ... {measured[-1]})"
        )
    return lines


def memory_target_line(setting: str, fused: Cell, mat: Cell) -> str:
    """The issue's target on one pair of runs: fused / materialised extra peak memory <= 1/20."""
    ratio = fused.memory.extra_peak / mat.memory.extra_peak
    verdict = "PASS" if ratio <= TARGET_MEMORY_RATIO else "FAIL"
    return (
        f"- {verdict} DNL fused / materialised memory, {setting}, P={mat.positions}: {mib(fused.memory.extra_peak)} "
        f"vs {mib(mat.memory.extra_peak)} MiB = {ratio:.4f} (1/{1 / ratio:.0f}) <= 1/20"
    )


def inference_lines(results: Results) -> list[str]:
    fused, mat = results.inference
    if mat.skipped:
        return [
            f"- DNL forward, eval, no_grad, N=1, P={fused.positions}: fused {mib(fused.memory.extra_peak)} MiB, "
            f"materialised {mat.skipped}"
        ]
    return [memory_target_line("forward, eval, no_grad, N=1", fused, mat)]


def training_memory_lines(results: Results) -> list[str]:
    """The same target for forward + backward (train mode), at the largest P where the materialised DNL ran."""
    cells = series(results)
    fused = {c.positions: c for c in cells[("DNL", "fused")] if not c.skipped}
    both = [c for c in cells[("DNL", "materialized")] if not c.skipped and c.positions in fused]
    if not both:
        return ["- DNL forward + backward: no P at which both paths ran"]
    return [memory_target_line("forward + backward (train)", fused[both[-1].positions], both[-1])]


def plot(results: Results, args: argparse.Namespace, path: Path) -> None:
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"fused": "-", "materialized": "--"}
    colours = {"DNL": "tab:red", "NL": "tab:blue"}
    for (kind, attention), cells in series(results).items():
        done = [c for c in cells if not c.skipped]
        if not done:
            continue
        p = [c.positions for c in done]
        style = dict(linestyle=styles[attention], color=colours[kind], marker="o", label=f"{kind} {attention}")
        time_ax.plot(p, [c.timing.wall for c in done], **style)
        memory_ax.plot(p, [c.memory.extra_peak / MiB for c in done], **style)
    fused = [c for c in results.train if c.kind == "DNL" and c.attention == "fused"]
    if fused:  # reference slopes through the first DNL fused point
        p0, m0 = fused[0].positions, fused[0].memory.extra_peak / MiB
        ps = [c.positions for c in fused]
        memory_ax.plot(ps, [m0 * q / p0 for q in ps], ":", color="grey", label="~P")
        memory_ax.plot(ps, [m0 * (q / p0) ** 2 for q in ps], "-.", color="grey", label="~P^2")
    for ax, label in ((time_ax, "fwd+bwd seconds"), (memory_ax, "extra peak MiB")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("positions P = H x W")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    memory_ax.legend(fontsize=7)
    fig.suptitle(f"context block fwd+bwd, N={args.batch}, C={CHANNELS}, {args.precision}, {args.device}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: Results, args: argparse.Namespace, clock: RunClock) -> str:
    return "\n".join(
        [
            "# Resolution scaling of the context blocks: fused vs materialised, NL vs DNL",
            "",
            *machine_lines(args, SEED),
            clock.line(),
            interleaving_line(),
            f"- setting: forward + backward, train mode, N={args.batch}, C={CHANNELS}, C'={CHANNELS // 2}, "
            f"{args.precision}, {args.repeats} timed round(s) after a warmup and the memory run; growth exponents "
            f"fitted on P >= {FIT_FROM} where measured",
            "",
            "## Target",
            "",
            *inference_lines(results),
            *training_memory_lines(results),
            "",
            "## Growth with P",
            "",
            *slope_lines(results),
            "",
            f"![resolution scaling]({figure_path(args.output).name})",
            "",
            "## Forward + backward: seconds and extra peak MiB",
            "",
            *scaling_table(results),
            "",
            "Extra peak: memory allocated during the call above what existed before it (input, upstream gradient, "
            "parameters): CUDA's `max_memory_allocated`, or on CPU the running sum of the allocator events that "
            "`torch.profiler(profile_memory=True)` records (see `context_blocks.md`, Method).",
            "",
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, Path(__file__).with_suffix(".md"))
    parser.add_argument("--batch", type=int, default=None, help="N (default 1; --paper: 2)")
    parser.add_argument("--precision", default="32-true", choices=list(PRECISIONS))
    parser.add_argument(
        "--max-materialized-gib",
        type=float,
        default=18.0,
        help="skip larger materialised runs (default 18; the free memory less 2 GiB also caps them)",
    )
    parser.add_argument("--max-positions", type=int, default=32768, help="largest P of the sweep")
    parser.add_argument("--paper", action="store_true", help="N=2, batch 2 per device as in the recipes")
    parser.add_argument("--quick", action="store_true", help="P up to 8192, 1 round")
    parser.add_argument("--tiny", action="store_true", help="smoke test: P = 64 ... 256")
    args = parser.parse_args(argv)
    finish_arguments(parser, args, argv)
    args.batch = args.batch or (2 if args.paper else 1)
    args.repeats = args.repeats or (1 if args.quick or args.tiny else 2)
    if args.quick:
        args.max_positions = min(args.max_positions, 8192)
    args.grids = TINY_GRIDS if args.tiny else [g for g in GRIDS if g[0] * g[1] <= args.max_positions]
    return args


def main(argv: list[str] | None = None) -> Results:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    random.seed(SEED)
    clock = RunClock()
    results = Results()
    for grid in args.grids:
        print(f"P = {grid[0] * grid[1]} ({grid[0]} x {grid[1]}) ...", flush=True)
        results.train += bench_grid(grid, args)
    print("inference forward at the largest P ...", flush=True)
    results.inference = bench_inference(args.grids[-1], args)
    plot(results, args, figure_path(args.output))
    write_report(report(results, args, clock), args.output)
    return results


if __name__ == "__main__":
    main()
