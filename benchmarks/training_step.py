"""Full training step (forward, backward, optimiser) of the baseline, NL and DNL heads on one encoder and crop.

Run from the repository root:

    make bench                                              # the whole suite, CPU-sized defaults
    .venv/bin/python benchmarks/training_step.py            # ResNet-50-D8, 512x512 crop, batch 1 (CPU default)
    .venv/bin/python benchmarks/training_step.py --paper    # the Cityscapes recipe: 512x1024 crop, batch 2 per device
    .venv/bin/python benchmarks/training_step.py --paper --encoder resnet101 --crop 769 769
    .venv/bin/python benchmarks/training_step.py --paper --device cuda --precision bf16-mixed --channels-last \\
        --output benchmarks/training_step_cuda.md

Every head runs the real training step of ``SegmentationModule`` (``losses``: decode head + 0.4 x aux FCN head,
cross-entropy over 19 classes) followed by ``loss.backward()`` and an SGD step (momentum 0.9, the recipe's
optimiser), on one fixed random batch. One untimed step builds the optimiser state; one more measures the peak
memory; then ``--repeats`` rounds time one step of each head in turn (baseline, NL, DNL, baseline, ...), so load
that drifts over the run hits every head alike, and the medians give images/s and the heads' time ratios to the
baseline. Writes ``--output`` (markdown) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import torch
from _measure import (
    HEADS,
    NUM_CLASSES,
    Memory,
    MiB,
    RunClock,
    Timing,
    add_common_arguments,
    add_model_arguments,
    autocast,
    build_module,
    fast_path_label,
    figure_path,
    finish_arguments,
    interleaving_line,
    machine_lines,
    markdown_table,
    measure_memory,
    mib,
    run_recording_sdpa_kernel,
    time_round_robin,
    write_report,
)

from dnlseg.models.module import default_optimizer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SEED = 0
TARGET_RATIO = {"cpu": 1.15, "cuda": 1.1}  # DNL step time / baseline step time, from the project's issue


class TrainingStep:
    """One optimiser step of a ``SegmentationModule`` on a fixed batch, as Lightning's automatic optimisation
    runs it: zero_grad, forward (under autocast for mixed precision), backward (loss-scaled for fp16), step."""

    def __init__(self, head: str, args: argparse.Namespace) -> None:
        self.module = build_module(head, args).train()
        self.optimizer = default_optimizer(self.module.parameters())
        self.device, self.precision = args.device, args.precision
        self.scaler = torch.amp.GradScaler(args.device.type, enabled=args.precision == "16-mixed")
        generator = torch.Generator().manual_seed(SEED)
        self.batch = {
            "image": torch.randn(args.batch, 3, *args.crop, generator=generator).to(args.device),
            "mask": torch.randint(0, NUM_CLASSES, (args.batch, *args.crop), generator=generator).to(args.device),
        }

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.precision):
            loss = self.module.losses(self.batch)["loss"]
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def resident_bytes(self) -> int:
        """Parameters and optimiser state (SGD momentum): what stays allocated between steps."""
        tensors = list(self.module.parameters()) + list(self.module.buffers())
        tensors += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class HeadResult:
    head: str
    timing: Timing
    memory: Memory
    resident: int
    batch: int
    sdpa_kernel: str  # of the context block's attention ("" for the baseline head)

    @property
    def images_per_second(self) -> float:
        return self.batch / self.timing.wall


def bench(args: argparse.Namespace) -> dict[str, HeadResult]:
    steps = {head: TrainingStep(head, args) for head in args.heads}
    memory, kernels = {}, {}
    for head, step in steps.items():
        print(f"{head}: warmup step, then the memory step ...", flush=True)
        # The warmup builds the momentum buffers (and compiles, with --compile).
        if head == "baseline":
            step()
        else:
            kernels[head] = run_recording_sdpa_kernel(step, args.compile)
        # No gradients before the measured step, on either device: the step's peak then counts the new gradients
        # (CUDA's allocator would otherwise net them against the old ones that zero_grad frees; CPU's profiler
        # never sees frees of blocks allocated before it started).
        step.optimizer.zero_grad(set_to_none=True)
        memory[head] = measure_memory(step, args.device)
    print(f"timing {args.repeats} rounds of {', '.join(steps)} ...", flush=True)
    timings = time_round_robin(steps, args.repeats, args.device)
    return {
        head: HeadResult(
            head, timings[head], memory[head], steps[head].resident_bytes(), args.batch, kernels.get(head, "")
        )
        for head in steps
    }


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def setting(args: argparse.Namespace) -> str:
    return (
        f"{args.encoder}-D{args.output_stride}, crop {args.crop[0]}x{args.crop[1]}, batch {args.batch} per device, "
        f"{NUM_CLASSES} classes, head width {args.head_channels}, {fast_path_label(args)}"
    )


def results_table(results: dict[str, HeadResult]) -> list[str]:
    base = results.get("baseline")
    header = [
        "head",
        "step s",
        "images/s",
        "time / baseline",
        "CPU time / baseline",
        "step peak MiB",
        "params + optimiser MiB",
        "total peak MiB",
    ]
    rows = []
    for r in results.values():
        ratio = f"{r.timing.wall / base.timing.wall:.3f}" if base else "-"
        cpu_ratio = f"{r.timing.cpu / base.timing.cpu:.3f}" if base else "-"
        rows.append(
            [
                r.head,
                f"{r.timing.wall:.2f}",
                f"{r.images_per_second:.3f}",
                ratio,
                cpu_ratio,
                mib(r.memory.extra_peak),
                mib(r.resident),
                mib(r.memory.extra_peak + r.resident),
            ]
        )
    return markdown_table(header, rows)


def target_lines(results: dict[str, HeadResult], args: argparse.Namespace) -> list[str]:
    if "baseline" not in results or "DNL" not in results:
        return ["- no target: needs the baseline and DNL heads"]
    limit = TARGET_RATIO["cuda" if args.device.type == "cuda" else "cpu"]
    ratio = results["DNL"].timing.wall / results["baseline"].timing.wall
    cpu_ratio = results["DNL"].timing.cpu / results["baseline"].timing.cpu
    verdict = "PASS" if ratio <= limit else "FAIL"
    return [f"- {verdict} DNL step time / baseline step time {ratio:.3f} <= {limit} (CPU-time ratio {cpu_ratio:.3f})"]


def plot(results: dict[str, HeadResult], args: argparse.Namespace, path: Path) -> None:
    heads = list(results)
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    speed.bar(heads, [results[h].images_per_second for h in heads], color="tab:blue")
    speed.set_ylabel("images / s")
    speed.set_title("training step throughput")
    totals = [(results[h].memory.extra_peak + results[h].resident) / MiB for h in heads]
    memory.bar(heads, totals, color="tab:orange")
    memory.set_ylabel("peak MiB (params + optimiser + step)")
    memory.set_title("training step peak memory")
    fig.suptitle(setting(args), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict[str, HeadResult], args: argparse.Namespace, clock: RunClock) -> str:
    memory_method = (
        "`torch.cuda.max_memory_allocated` during the step minus the memory allocated before it"
        if args.device.type == "cuda"
        else "the running sum of allocations and frees that `torch.profiler` (profile_memory) records from "
        "c10's CPU allocator during the step (MKL-private buffers unseen)"
    )
    return "\n".join(
        [
            "# Training step: baseline vs NL vs DNL head",
            "",
            *machine_lines(args, SEED),
            clock.line(),
            interleaving_line(),
            f"- setting: {setting(args)}",
            "",
            "## Target",
            "",
            *target_lines(results, args),
            "",
            "## Results",
            "",
            *results_table(results),
            "",
            *[
                f"- SDPA kernel of the {r.head} head (warmup step): {r.sdpa_kernel}"
                for r in results.values()
                if r.sdpa_kernel
            ],
            "",
            f"![training step]({figure_path(args.output).name})",
            "",
            "## Method",
            "",
            f"- time: wall clock of zero_grad + forward + backward + SGD step, median of {args.repeats} rounds; "
            "each round runs one step of every head in turn. CPU time: the process's user + system time of the "
            "same calls, steadier than wall time when other jobs share the CPUs.",
            f"- step peak: {memory_method}, of a step that starts with no gradients allocated (activations, "
            "gradients, workspace); parameters, buffers and momentum are the resident part, added to give the total.",
            "- model: `SegmentationModule` with random weights (speed and memory do not depend on them), aux FCN "
            "head on, dropout 0.1; the context block is `DisentangledNonLocal2d`/`NonLocal2d` with the fused "
            "attention (`F.scaled_dot_product_attention`), C = head width, C' = C / 2.",
            "",
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, Path(__file__).with_suffix(".md"))
    add_model_arguments(parser)
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 512 512")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 1; --paper: 2)")
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--paper", action="store_true", help="the recipe's 512x1024 crop, batch 2 per device")
    parser.add_argument("--quick", action="store_true", help="1 timed round")
    parser.add_argument("--tiny", action="store_true", help="smoke test: resnet18, 64x64, head width 32")
    args = parser.parse_args(argv)
    finish_arguments(parser, args, argv)
    if args.tiny:
        args.encoder, args.head_channels = "resnet18", 32
        args.crop, args.batch, args.repeats = args.crop or [64, 64], args.batch or 2, args.repeats or 1
    if args.paper:
        args.crop, args.batch = args.crop or [512, 1024], args.batch or 2
    args.crop = tuple(args.crop or (512, 512))
    args.batch = args.batch or 1
    args.repeats = args.repeats or (1 if args.quick else 7)
    return args


def main(argv: list[str] | None = None) -> dict[str, HeadResult]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    random.seed(SEED)
    clock = RunClock()
    results = bench(args)
    plot(results, args, figure_path(args.output))
    write_report(report(results, args, clock), args.output)
    return results


if __name__ == "__main__":
    main()
