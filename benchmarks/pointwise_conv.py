"""A 1x1 convolution on CPU: ``nn.Conv2d`` (oneDNN) against ``dnlseg.context.layers.pointwise_conv`` (matrix
products: one per image of a contiguous map, one over all pixels of a channels-last map), forward and
forward + backward (input and weight gradients), at the feature-map sizes of the blocks' benchmarks.

    make bench-pointwise                                   # -> benchmarks/pointwise_conv.md
    .venv/bin/python benchmarks/pointwise_conv.py --quick

Interleaved rounds (one call of each per round, median). The blocks that use it: CC (its three projections as one
product over tokens), PAM, APNB/AFNB, ISA, EMA and OCR (``ConvNormAct``); not NL, DNL or GC.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _measure import benchmark_parser, markdown_table, parse, time_interleaved, write_report
from torch import nn

from dnlseg.context.layers import pointwise_conv

SEED = 0
CHANNELS = 512
SHAPES = [(2, 97, 97), (2, 104, 104), (2, 64, 128), (1, 128, 256)]  # block fwd+bwd, ISA's padded, 512x1024 crop, whole
LAYOUTS = ("contiguous", "channels last")


def bench(shape: tuple[int, int, int], layout: str, channels: int, repeats: int) -> list[str]:
    N, H, W = shape
    generator = torch.Generator().manual_seed(SEED)
    conv = nn.Conv2d(channels, channels, 1)
    x = torch.randn(N, channels, H, W, generator=generator)
    if layout == "channels last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    grad = torch.randn(N, channels, H, W, generator=generator)

    def train(layer) -> None:
        layer(x).backward(grad)

    def forward(layer) -> None:
        with torch.no_grad():
            layer(x)

    layers = {"conv": conv, "pointwise": lambda t: pointwise_conv(t, conv)}
    calls = {
        (mode, name): (lambda f=f, layer=layer: f(layer))
        for mode, f in (("fwd+bwd", train), ("forward", forward))
        for name, layer in layers.items()
    }
    for call in calls.values():  # warmup
        call()
    timings = time_interleaved(calls, repeats, torch.device("cpu"))
    row = [f"{N} x {channels} x {H} x {W}", layout]
    for mode in ("fwd+bwd", "forward"):
        ours, theirs = timings[mode, "pointwise"].wall, timings[mode, "conv"].wall
        row += [f"{1000 * theirs:.3g}", f"{1000 * ours:.3g}", f"{ours / theirs:.2f}"]
    print(" | ".join(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"), device=False)
    args = parse(parser, argv)
    repeats = args.repeats or (2 if args.tiny else 5 if args.quick else 11)
    shapes, channels = ([(2, 9, 9)], 16) if args.tiny else (SHAPES, CHANNELS)
    rows = [bench(shape, layout, channels, repeats) for shape in shapes for layout in LAYOUTS]
    header = ["N x C x H x W", "input memory"]
    for mode in ("fwd+bwd", "forward"):
        header += [f"{mode} conv ms", f"{mode} pointwise ms", f"{mode} pointwise/conv"]
    lines = args.run.header("1x1 convolution: oneDNN against matrix products (CPU)")
    lines += ["", f"C_in = C_out = {channels}, bias, float32; median of {repeats} interleaved rounds.", ""]
    write_report(lines + markdown_table(header, rows), args.output)
    return rows


if __name__ == "__main__":
    main()
