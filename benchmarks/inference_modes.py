"""Throughput and peak memory of the three evaluation modes of ``dnlseg.evaluation.Inference`` (whole image,
sliding window, multi-scale + flip) for one network, as validation runs them.

    make bench-inference                                    # R50-D8 DNL, 256x512 image, 192x192 windows every 128
    .venv/bin/python benchmarks/inference_modes.py --paper  # a 1024x2048 Cityscapes image, 769x769 windows every 513
    .venv/bin/python benchmarks/inference_modes.py --paper --device cuda --precision bf16-mixed --channels-last
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from _measure import (
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
from dnlseg.evaluation import Inference
from dnlseg.evaluation.inference import slide_windows

SEED = 0
SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
TARGET_WHOLE_BYTES = 4e9  # GPU: whole 1024x2048 DNL R50-D8 in bf16, total peak, from the project's issue


@dataclass
class ModeResult:
    mode: str
    timing: Timing
    memory: Memory
    forward_passes: int  # network forwards per image: 1, one per window, one per scale and flip
    views: str


def modes(args: argparse.Namespace) -> dict[str, tuple[Inference, int, str]]:
    """Each mode's ``Inference``, its network forwards per image, and their description."""
    windows = len(slide_windows(*args.image, args.window, args.stride))
    window, stride = "x".join(map(str, args.window)), "x".join(map(str, args.stride))
    multi_scale = Inference(scales=SCALES, flip=True)
    return {
        "whole": (Inference(), 1, "the whole image at once"),
        "slide": (
            Inference(mode="slide", crop_size=args.window, stride=args.stride),
            windows,
            f"{windows} windows of {window} every {stride}",
        ),
        "ms+flip": (
            multi_scale,
            multi_scale.views,
            f"scales {', '.join(f'{s:g}' for s in SCALES)} x (image, flipped)",
        ),
    }


def bench(args: argparse.Namespace) -> tuple[dict[str, ModeResult], str, int]:
    """The modes' results, the SDPA kernel of the whole-image warmup, and the network's resident bytes."""
    module = build_module(args.head, args, SEED).eval()
    images = torch.randn(args.batch, 3, *args.image, generator=torch.Generator().manual_seed(SEED)).to(args.device)
    calls, memory, kernel = {}, {}, ""
    for name, (inference, _, _) in modes(args).items():

        def call(inference=inference) -> None:
            with torch.no_grad(), autocast(args.device, args.precision):
                inference(module, images)  # (N, K, H, W) scores, dropped

        print(f"{name}: warmup (compiles the new shapes with --compile), then the memory run", flush=True)
        if name == "whole":
            kernel = sdpa_kernel_of(call, args.compile)
        else:
            call()
        memory[name] = measure_memory(call, args.device)
        calls[name] = call
    timings = time_interleaved(calls, args.repeats, args.device)
    results = {
        name: ModeResult(name, timings[name], memory[name], passes, views)
        for name, (_, passes, views) in modes(args).items()
    }
    return results, kernel, tensor_bytes([*module.parameters(), *module.buffers()])


def report(results: dict[str, ModeResult], kernel: str, resident: int, args: argparse.Namespace) -> list[str]:
    setting = (
        f"{VARIANTS[args.head].label} head, {args.encoder}-D{args.output_stride}, image {args.image[0]}x"
        f"{args.image[1]}, batch {args.batch}, {fast_path_label(args)}"
    )
    whole = results["whole"]
    total = whole.memory.extra_peak + resident
    paper = args.image == (1024, 2048) and args.head == "dnl" and args.encoder == "resnet50"
    if args.device.type == "cuda" and paper and args.precision == "bf16-mixed":
        target = f"{'PASS' if total < TARGET_WHOLE_BYTES else 'FAIL'} whole-image DNL R50-D8 bf16 total peak"
    else:
        target = "whole-image total peak (the < 4 GB target is for `--paper --device cuda --precision bf16-mixed`)"
    rows = [
        [
            r.mode,
            r.views,
            r.forward_passes,
            f"{r.timing.wall:.2f}",
            f"{args.batch / r.timing.wall:.3f}",
            f"{r.timing.wall / whole.timing.wall:.2f}",
            mib(r.memory.extra_peak),
            mib(r.memory.extra_peak + resident),
        ]
        for r in results.values()
    ]
    header = ["mode", "views", "network forwards", "s / batch", "images/s", "time / whole", "extra peak MiB"]
    lines = args.run.header("Inference modes: whole image, sliding window, multi-scale + flip", args.device, SEED)
    lines += [
        f"- {setting}; median of {args.repeats} interleaved rounds after a warmup and the memory run; total peak = "
        f"extra peak + parameters and buffers ({mib(resident)} MiB)",
        f"- SDPA kernel of the context block (whole-image warmup): {kernel}",
        f"- {target}: {total / 1e9:.2f} GB",
        "",
        *markdown_table([*header, "total peak MiB"], rows),
        "",
    ]
    speeds = [r.timing.per_second(args.batch) for r in results.values()]
    panels = [Panel("images / s", [v for v, _ in speeds], [spread for _, spread in speeds])]
    panels.append(Panel("total peak MiB", [(r.memory.extra_peak + resident) / MiB for r in results.values()]))
    return lines + [bar_figure(args.output, setting, list(results), panels, hardware(args.device))]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"))
    add_model_arguments(parser)
    parser.add_argument("--head", default="dnl", choices=list(VARIANTS))
    parser.add_argument("--image", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 256 512")
    parser.add_argument("--window", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 192 192")
    parser.add_argument("--stride", type=int, nargs=2, default=None, metavar=("H", "W"), help="default 128 128")
    parser.add_argument("--batch", type=int, default=1)
    args = parse(parser, argv)
    sizes = {"image": (256, 512), "window": (192, 192), "stride": (128, 128)}
    if args.tiny:
        args.encoder, args.head_channels = "resnet18", 32
        sizes = {"image": (64, 128), "window": (48, 48), "stride": (32, 32)}
    if args.paper:
        sizes = {"image": (1024, 2048), "window": (769, 769), "stride": (513, 513)}
    for name, default in sizes.items():
        setattr(args, name, tuple(getattr(args, name) or default))
    args.repeats = args.repeats or (1 if args.quick or args.tiny else 3)
    return args


def main(argv: list[str] | None = None) -> dict[str, ModeResult]:
    args = parse_args(argv)
    results, kernel, resident = bench(args)
    write_report(report(results, kernel, resident, args), args.output)
    return results


if __name__ == "__main__":
    main()
