"""Full training step (forward, backward, SGD) of ``SegmentationModule`` with the baseline and context heads of
``dnlseg.context.VARIANTS`` on one encoder and crop, heads interleaved in each timed round.

    make bench-training                                     # ResNet-50-D8, 512x512 crop, batch 1 (CPU default)
    .venv/bin/python benchmarks/training_step.py --paper    # the Cityscapes recipe: 512x1024 crop, batch 2 per device
    .venv/bin/python benchmarks/training_step.py --paper --device cuda --precision bf16-mixed --channels-last
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from _measure import (
    NUM_CLASSES,
    Memory,
    MiB,
    Panel,
    Timing,
    add_model_arguments,
    autocast,
    bar_figure,
    benchmark_parser,
    build_module,
    fast_path_label,
    hardware,
    markdown_table,
    measure_memory,
    mib,
    parse,
    sdpa_kernel_of,
    tensor_bytes,
    time_interleaved,
    write_report,
)

from dnlseg.context import VARIANTS
from dnlseg.models.module import default_optimizer

SEED = 0
TARGET_RATIO = {"cpu": 1.15, "cuda": 1.1}  # DNL step time / baseline step time, from the project's issue


class TrainingStep:
    """One optimiser step on a fixed batch as Lightning's automatic optimisation runs it: zero_grad, forward
    (under autocast for mixed precision), backward (loss-scaled for fp16), step."""

    def __init__(self, head: str, args: argparse.Namespace) -> None:
        self.module = build_module(head, args, SEED).train()
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
        """Parameters, buffers and optimiser state (SGD momentum): what stays allocated between steps."""
        state = [t for values in self.optimizer.state.values() for t in values.values() if torch.is_tensor(t)]
        return tensor_bytes([*self.module.parameters(), *self.module.buffers(), *state])


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

    @property
    def total_peak(self) -> int:
        return self.memory.extra_peak + self.resident


def bench(args: argparse.Namespace) -> dict[str, HeadResult]:
    steps = {head: TrainingStep(head, args) for head in args.heads}
    memory, kernels = {}, {}
    for head, step in steps.items():
        print(f"{head}: warmup step (momentum buffers; compiles with --compile), then the memory step", flush=True)
        kernel = sdpa_kernel_of(step, args.compile)
        attention = VARIANTS[head].block is not None and "fused" in VARIANTS[head].block.attention_paths
        kernels[head] = kernel if attention else ""  # the baseline and GC have no pairwise attention
        # The measured step starts without gradients, so its peak counts the new ones on either device.
        step.optimizer.zero_grad(set_to_none=True)
        memory[head] = measure_memory(step, args.device)
    print(f"timing {args.repeats} rounds ...", flush=True)
    timings = time_interleaved(steps, args.repeats, args.device)
    return {
        head: HeadResult(head, timings[head], memory[head], step.resident_bytes(), args.batch, kernels[head])
        for head, step in steps.items()
    }


def setting(args: argparse.Namespace) -> str:
    return (
        f"{args.encoder}-D{args.output_stride}, crop {args.crop[0]}x{args.crop[1]}, batch {args.batch} per device, "
        f"{NUM_CLASSES} classes, head width {args.head_channels}, {fast_path_label(args)}"
    )


def report(results: dict[str, HeadResult], args: argparse.Namespace) -> list[str]:
    base = results.get("baseline")
    rows = [
        [
            VARIANTS[r.head].label,
            f"{r.timing.wall:.2f}",
            f"{r.images_per_second:.3f}",
            f"{r.timing.wall / base.timing.wall:.3f}" if base else "-",
            f"{r.timing.cpu / base.timing.cpu:.3f}" if base else "-",
            mib(r.memory.extra_peak),
            mib(r.resident),
            mib(r.total_peak),
        ]
        for r in results.values()
    ]
    header = ["head", "step s", "images/s", "time / baseline", "CPU time / baseline", "step peak MiB"]
    header += ["params + optimiser MiB", "total peak MiB"]
    lines = args.run.header("Training step: baseline vs context heads", args.device, SEED)
    lines += [
        f"- {setting(args)}; median of {args.repeats} interleaved rounds after a warmup and the memory step; "
        "step peak above what was allocated before it, total = + parameters, buffers and momentum",
        "",
    ]
    if base and "dnl" in results:
        limit, dnl = TARGET_RATIO[args.device.type], results["dnl"].timing
        ratio, cpu_ratio = dnl.wall / base.timing.wall, dnl.cpu / base.timing.cpu
        verdict = "PASS" if ratio <= limit else "FAIL"
        lines += [
            f"- {verdict} DNL step time / baseline step time {ratio:.3f} <= {limit} (CPU time {cpu_ratio:.3f})",
            "",
        ]
    lines += markdown_table(header, rows) + [""]
    lines += [f"- SDPA kernel, {r.head} head: {r.sdpa_kernel}" for r in results.values() if r.sdpa_kernel]
    names = [VARIANTS[h].label for h in results]
    speeds = [r.timing.per_second(r.batch) for r in results.values()]
    panels = [Panel("images / s", [v for v, _ in speeds], [spread for _, spread in speeds])]
    panels.append(Panel("total peak MiB", [r.total_peak / MiB for r in results.values()]))
    return lines + ["", bar_figure(args.output, setting(args), names, panels, hardware(args.device))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"))
    add_model_arguments(parser)
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 512 512")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 1; --paper: 2)")
    parser.add_argument("--heads", nargs="+", default=["baseline", "nl", "dnl", "gc"], choices=list(VARIANTS))
    args = parse(parser, argv)
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
    args = parse_args(argv)
    results = bench(args)
    write_report(report(results, args), args.output)
    return results


if __name__ == "__main__":
    main()
