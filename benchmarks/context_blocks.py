"""Time and peak memory of the context blocks alone (``dnlseg.context.VARIANTS``), fused vs materialised attention
and beside mmsegmentation 1.2.2's own blocks where the ``parity`` extra is installed: forward + backward at
training grids, and the forward of a whole 1024x2048 image at stride 8 (P = 32768). The blocks of the other heads
(``dnlseg.context.BLOCKS``: DANet, CCNet, ANN, ISA, EMANet, OCR) run beside mmseg's own modules, interleaved, at
P = 9409 (fwd+bwd) and the whole image.

    make bench-blocks     # N=2 at the recipes' crops (P = 4225, 8192, 9409)           -> context_blocks.md
    make bench-scaling    # --scaling: N=1, P = 1024 ... 32768, growth exponents, plot -> resolution_scaling.md
    .venv/bin/python benchmarks/context_blocks.py --quick --variants dnl --no-mmseg
    .venv/bin/python benchmarks/context_blocks.py --variants --blocks pam cc --output /tmp/blocks.md
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _measure import (
    PRECISIONS,
    GiB,
    Memory,
    Timing,
    autocast,
    available_bytes,
    benchmark_parser,
    markdown_table,
    measure_memory,
    mib,
    parse,
    pyplot,
    save_figure,
    sdpa_kernel_of,
    time_interleaved,
    write_report,
)
from torch import nn

from dnlseg.context import BLOCKS, VARIANTS

SEED = 0
CHANNELS = 512  # C; NL and DNL use C' = C / 2 (their default reduction)
CROP_GRIDS = [(65, 65), (64, 128), (97, 97)]  # ADE20K 520 crop, Cityscapes 512x1024 and 769x769 crops at stride 8
SCALING_GRIDS = [(32, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]  # P = 1024 ... 32768
WHOLE_IMAGE = (128, 256)  # 1024x2048 at stride 8
MMSEG_KINDS = {"nl": "NL", "dnl": "DNL"}  # our variants that mmseg_reference.context_block builds too
FIT_FROM = 4096  # growth exponents are fitted on P >= this, where the attention outweighs the fixed costs
TARGETS = {"time": 0.7, "memory": 0.2, "rate": 0.7, "scaling_memory": 1 / 20}  # from issue #7
BLOCK_TARGETS = {"time": 1.0, "memory": 0.5, "whole_gb": 2.0}  # from issue #21: ours / mmseg's, PAM's memory


def attention_flops(batch: int, positions: int, channels: int, backward: bool) -> int:
    """Matmul FLOPs of softmax(Q K^T) V, P keys = queries: forward F = 4 N P^2 C' (Q K^T and A V); backward 2F plus
    0.5F for recomputing Q K^T tile by tile (the fused kernel keeps no A): fwd+bwd 3.5F."""
    forward = 4 * batch * positions**2 * channels
    return forward * 7 // 2 if backward else forward


def conv_flops(batch: int, positions: int, variant: str, backward: bool) -> int:
    """1x1 convs q, k, v (C -> C'), out (C' -> C), DNL's unary (C -> 1); backward = 2x forward."""
    c, cp = CHANNELS, CHANNELS // 2
    forward = 2 * batch * positions * (4 * c * cp + (c if variant == "dnl" else 0))
    return 3 * forward if backward else forward


def make_block(variant: str, path: str, device: torch.device) -> nn.Module:
    """The variant's block (``path`` "fused"/"materialized") or mmseg's block of that kind ("mmseg"), seeded so both
    of our paths share weights; zero-initialised parameters (the output norm's weight) are set to ones, so the
    gradient reaches every branch."""
    torch.manual_seed(SEED)
    if path == "mmseg":
        from mmseg_reference import context_block

        block = context_block(MMSEG_KINDS[variant], CHANNELS, 2)
    elif VARIANTS[variant].block.attention_paths:
        block = VARIANTS[variant].build(CHANNELS, attention=path)
    else:
        block = VARIANTS[variant].build(CHANNELS)
    for parameter in block.parameters():
        if not parameter.detach().any():
            nn.init.ones_(parameter)
    return block.to(device)


def paths(variant: str, mmseg: bool) -> list[str]:
    if not VARIANTS[variant].block.attention_paths:
        return ["fused"]  # no (P, P) attention to materialise: the block as it is
    return ["fused", "materialized"] + (["mmseg"] if mmseg and variant in MMSEG_KINDS else [])


def mmseg_available() -> bool:
    try:
        import mmseg_reference

        mmseg_reference.import_mmseg()
    except ImportError:
        return False
    return True


def materialized_bytes(batch: int, positions: int, path: str, train: bool) -> int:
    """fp32 (P, P) maps live at the peak: about 4 per image in a fwd+bwd (3.3 measured at P = 9409); in the
    forward 3 in ours (DNL: p, softmax(p), + softmax(u); NL: p, p + u, its softmax), 2 in mmseg's."""
    maps = 4 if train else 2 if path == "mmseg" else 3
    return maps * batch * positions**2 * 4


@dataclass
class Cell:
    variant: str
    path: str
    grid: tuple[int, int]
    batch: int
    timing: Timing | None = None
    memory: Memory | None = None
    skipped: str = ""
    kernel: str = ""
    grad_difference: float | None = None  # max |dx fused - dx materialised| / max |dx materialised|
    matmul_rate: float = 0.0  # GFLOP/s of the reference matmul timed in the same rounds

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    def rate(self, backward: bool) -> float | None:
        """Achieved GFLOP/s of the attention + 1x1 convs (NL and DNL only)."""
        if self.variant not in MMSEG_KINDS or self.timing is None:
            return None
        flops = attention_flops(self.batch, self.positions, CHANNELS // 2, backward)
        return (flops + conv_flops(self.batch, self.positions, self.variant, backward)) / self.timing.wall / 1e9


def skip_reason(cell: Cell, args, train: bool) -> str:
    if cell.path == "fused":
        return ""
    if args.quick and not train:
        return "skipped by --quick"
    need, free = materialized_bytes(cell.batch, cell.positions, cell.path, train), available_bytes(args.device)
    if need > args.max_materialized_gib * GiB or need + 2 * GiB > free:
        return f"skipped: needs ~{need / GiB:.0f} GiB (cap {args.max_materialized_gib:g}, {free / GiB:.0f} free)"
    return ""


def reference_matmul(args):
    """A square fp32 matmul, timed in the same rounds as the blocks: the rate their achieved rate is compared to."""
    a = torch.randn(args.square, args.square, device=args.device)
    b = torch.randn_like(a)
    return (lambda: a @ b), 2 * args.square**3


def bench(grid: tuple[int, int], batch: int, train: bool, args) -> list[Cell]:
    """Every variant and path at one grid: one warmup and one memory run each, then interleaved timed rounds."""
    torch.manual_seed(SEED)
    x = torch.randn(batch, CHANNELS, *grid, device=args.device, requires_grad=train)  # (N, C, H, W)
    grad_out = torch.randn_like(x)
    cells, calls, fused_grads = [], {}, {}
    for variant in args.variants:
        for path in paths(variant, args.mmseg):
            cell = Cell(variant, path, grid, batch)
            cells.append(cell)
            cell.skipped = skip_reason(cell, args, train)
            if cell.skipped:
                continue
            block = make_block(variant, path, args.device).train(train)

            def call(block=block) -> None:
                with torch.set_grad_enabled(train), autocast(args.device, args.precision):
                    y = block(x)  # (N, C, H, W)
                if train:
                    y.backward(grad_out)

            cell.kernel = sdpa_kernel_of(call)  # also the warmup
            x.grad = None  # the measured call starts with no gradients allocated
            block.zero_grad(set_to_none=True)
            cell.memory = measure_memory(call, args.device, rss=not train)
            if train and path == "fused":
                fused_grads[variant] = x.grad.clone()
            elif train and path == "materialized":
                cell.grad_difference = ((fused_grads[variant] - x.grad).abs().max() / x.grad.abs().max()).item()
            calls[variant, path] = call
            print(f"  P={cell.positions} {variant} {path}: {mib(cell.memory.extra_peak)} MiB", flush=True)
    matmul, flops = reference_matmul(args)
    repeats = args.repeats if train else args.whole_repeats
    timings = time_interleaved({**calls, "matmul": matmul}, repeats, args.device)
    for cell in cells:
        cell.timing = timings.get((cell.variant, cell.path))
        cell.matmul_rate = flops / timings["matmul"].wall / 1e9
    return cells


def attention_alone(grid: tuple[int, int], args) -> dict[str, Timing]:
    """fwd+bwd of SDPA vs the plainest materialised softmax(Q K^T / sqrt(C')) V on the (N, 1, P, C') q/k/v the
    blocks build: what their fused / materialised ratio is bounded by."""
    p, cp = grid[0] * grid[1], CHANNELS // 2
    q, k, v = (torch.randn(args.batch, 1, p, cp, device=args.device, requires_grad=True) for _ in range(3))
    grad_out = torch.randn(args.batch, 1, p, cp, device=args.device)

    def sdpa() -> None:
        q.grad = k.grad = v.grad = None
        F.scaled_dot_product_attention(q, k, v).backward(grad_out)

    def plain() -> None:
        q.grad = k.grad = v.grad = None
        weights = torch.softmax(q @ k.transpose(-2, -1) * cp**-0.5, dim=-1)  # (N, 1, P, P)
        (weights @ v).backward(grad_out)  # (N, 1, P, C')

    time_interleaved({"SDPA": sdpa, "plain": plain}, 1, args.device)  # warmup
    return time_interleaved({"SDPA": sdpa, "plain": plain}, args.repeats, args.device)


@dataclass
class BlockCell:
    """One block of ``BLOCKS`` on one path ("fused", "materialized", "-" for a block with one path, or "mmseg")."""

    block: str
    path: str
    grid: tuple[int, int]
    timing: Timing | None = None
    memory: Memory | None = None
    skipped: str = ""

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]


def block_paths(name: str, args, train: bool) -> list[str]:
    """Our paths of the block (its default first), then mmseg's; the materialised reference only in training."""
    declared = list(BLOCKS[name].block.attention_paths) or ["-"]
    ours = declared if train else declared[:1]
    return ours + (["mmseg"] if args.mmseg else [])


def make_lab_block(name: str, path: str, device: torch.device) -> nn.Module:
    """Ours (``path``) or mmseg's module of ``BLOCKS[name]`` for a C-channel head; zero-initialised parameters
    (gammas, ANN's output conv) set to ones so that the gradient reaches every branch."""
    torch.manual_seed(SEED)
    if path == "mmseg":
        from mmseg_reference import block_module

        block = block_module(name, CHANNELS)
    else:
        block = BLOCKS[name].build(CHANNELS, **({} if path == "-" else {"attention": path}))
    for parameter in block.parameters():
        if not parameter.detach().any():
            nn.init.ones_(parameter)
    return block.to(device)


def block_skip_reason(name: str, path: str, batch: int, positions: int, args, train: bool) -> str:
    """PAM's and CC's materialised maps and mmseg's PAM: skipped when their (P, P) maps would not fit."""
    if not (path == "materialized" or (path == "mmseg" and name == "pam")):
        return ""
    need, free = materialized_bytes(batch, positions, "mmseg", train), available_bytes(args.device)
    if need > args.max_materialized_gib * GiB or need + 2 * GiB > free:
        return f"skipped: needs ~{need / GiB:.0f} GiB (cap {args.max_materialized_gib:g}, {free / GiB:.0f} free)"
    return ""


def bench_lab_blocks(grid: tuple[int, int], batch: int, train: bool, args) -> list[BlockCell]:
    """Every block of ``args.blocks`` on each path: a warmup and a memory run each, then interleaved timed rounds."""
    generator = torch.Generator().manual_seed(SEED)
    cells, calls = [], {}
    for name in args.blocks:
        inputs = [t.to(args.device) for t in BLOCKS[name].example_inputs(batch, CHANNELS, grid, generator=generator)]
        for t in inputs:
            t.requires_grad_(train)
        for path in block_paths(name, args, train):
            cell = BlockCell(name, path, grid)
            cells.append(cell)
            cell.skipped = block_skip_reason(name, path, batch, cell.positions, args, train)
            if cell.skipped:
                continue
            block = make_lab_block(name, path, args.device).train(train)

            def call(block=block, inputs=inputs) -> None:
                with torch.set_grad_enabled(train), autocast(args.device, args.precision):
                    y = block(*inputs)
                if train:
                    y.backward(torch.ones_like(y))

            call()  # warmup
            for t in inputs:
                t.grad = None
            block.zero_grad(set_to_none=True)
            cell.memory = measure_memory(call, args.device)
            calls[name, path] = call
            print(f"  P={cell.positions} {name} {path}: {mib(cell.memory.extra_peak)} MiB", flush=True)
    repeats = args.repeats if train else args.whole_repeats
    timings = time_interleaved(calls, repeats, args.device)
    for cell in cells:
        cell.timing = timings.get((cell.block, cell.path))
    return cells


def lab_table(cells: list[BlockCell]) -> list[str]:
    """One row per block and our path, beside mmseg's module at the same P."""
    mmseg = {(c.block, c.grid): c for c in cells if c.path == "mmseg"}
    rows = []
    for c in (c for c in cells if c.path != "mmseg"):
        ref = mmseg.get((c.block, c.grid))
        ran = ref is not None and not ref.skipped
        rows.append(
            [
                BLOCKS[c.block].label,
                c.path,
                f"{c.positions} ({c.grid[0]} x {c.grid[1]})",
                c.skipped or f"{c.timing.wall:.3f}",
                "-" if ref is None else ref.skipped or f"{ref.timing.wall:.3f}",
                ratio(c.timing.wall, ref.timing.wall) if ran and not c.skipped else "-",
                ratio(c.timing.cpu, ref.timing.cpu) if ran and not c.skipped else "-",
                "-" if c.skipped else mib(c.memory.extra_peak),
                mib(ref.memory.extra_peak) if ran else "-",
                ratio(c.memory.extra_peak, ref.memory.extra_peak, 3) if ran and not c.skipped else "-",
            ]
        )
    header = ["block", "path", "P (H x W)", "ours s", "mmseg s", "time ours/mmseg", "CPU time ours/mmseg"]
    return markdown_table(header + ["ours MiB", "mmseg MiB", "memory ours/mmseg"], rows)


def lab_target_lines(train: list[BlockCell], whole: list[BlockCell]) -> list[str]:
    """Issue #21's targets on each block's default path: time <= 1.0x mmseg's (fwd+bwd and whole image), PAM's
    memory <= 0.5x mmseg's, no block above 2 GB at whole-image inference."""
    lines = []
    for cells, setting in ((train, "fwd+bwd"), (whole, "whole-image forward")):
        mmseg = {c.block: c for c in cells if c.path == "mmseg" and not c.skipped}
        for name in dict.fromkeys(c.block for c in cells):
            ours = next(c for c in cells if c.block == name and c.path != "mmseg")
            label = f"{BLOCKS[name].label} {setting} P={ours.positions}"
            if name in mmseg:
                time = ours.timing.wall / mmseg[name].timing.wall
                ok = time <= BLOCK_TARGETS["time"]
                lines.append(f"- {'PASS' if ok else 'FAIL'} {label} time ours/mmseg {time:.2f} <= 1.0")
                if name == "pam":
                    memory = ours.memory.extra_peak / mmseg[name].memory.extra_peak
                    ok = memory <= BLOCK_TARGETS["memory"]
                    lines.append(f"- {'PASS' if ok else 'FAIL'} {label} memory ours/mmseg {memory:.3f} <= 0.5")
            if setting != "fwd+bwd":
                gb = ours.memory.extra_peak / 1e9
                ok = gb <= BLOCK_TARGETS["whole_gb"]
                lines.append(f"- {'PASS' if ok else 'FAIL'} {label} {gb:.2f} GB above the input <= 2")
    return lines


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return "-" if a is None or b is None else f"{a / b:.{digits}f}"


def table(cells: list[Cell], train: bool) -> list[str]:
    """One row per variant and P: ours fused and materialised, mmseg's, and their ratios."""
    by_key = {(c.variant, c.path, c.grid): c for c in cells}
    rows = []
    for c in (c for c in cells if c.path == "fused"):
        mat, mmseg = by_key.get((c.variant, "materialized", c.grid)), by_key.get((c.variant, "mmseg", c.grid))

        def wall(cell):
            return None if cell is None or cell.skipped else cell.timing.wall

        def cpu(cell):
            return None if cell is None or cell.skipped else cell.timing.cpu

        def peak(cell):
            return None if cell is None or cell.skipped else cell.memory.extra_peak

        rate = c.rate(train)
        rows.append(
            [
                VARIANTS[c.variant].label,
                f"{c.positions} ({c.grid[0]} x {c.grid[1]})",
                f"{c.timing.wall:.3f}",
                "-" if wall(mat) is None else f"{wall(mat):.3f}",
                ratio(wall(c), wall(mat)),
                ratio(cpu(c), cpu(mat)),
                mib(c.memory.extra_peak),
                "-" if peak(mat) is None else mib(peak(mat)),
                ratio(peak(c), peak(mat), 3),
                "-" if rate is None else f"{rate:.0f} ({rate / c.matmul_rate:.0%})",
                "-" if mat is None or mat.grad_difference is None else f"{mat.grad_difference:.1e}",
                "-" if peak(mmseg) is None else mib(peak(mmseg)),
                ratio(wall(c), wall(mmseg)),
                ratio(cpu(c), cpu(mmseg)),
                ratio(peak(c), peak(mmseg), 3),
            ]
            + ([] if train else [mib(c.memory.rss_peak), mib(mat.memory.rss_peak) if peak(mat) else "-"])
        )
        if mat is not None and mat.skipped:
            rows[-1][3] = mat.skipped
        if mmseg is not None and mmseg.skipped:
            rows[-1][11] = mmseg.skipped
    header = ["block", "P (H x W)", "fused s", "mat. s", "time fused/mat.", "CPU time fused/mat.", "fused MiB"]
    header += ["mat. MiB", "memory fused/mat.", "fused GFLOP/s (of matmul)", "dx rel. diff", "mmseg MiB"]
    header += ["time ours/mmseg", "CPU time ours/mmseg", "memory ours/mmseg"]
    header += [] if train else ["fused RSS MiB", "mat. RSS MiB"]
    return markdown_table(header, rows)


def slope(cells: list[Cell], value) -> float | None:
    """Least-squares exponent b of value ~ P^b (log-log) over the cells with P >= FIT_FROM (all, if < 2 are)."""
    large = [c for c in cells if c.positions >= FIT_FROM]
    points = [(math.log(c.positions), math.log(value(c))) for c in (large if len(large) >= 2 else cells)]
    if len(points) < 2:
        return None
    mx, my = (sum(x) / len(points) for x in zip(*points, strict=True))
    return sum((p - mx) * (v - my) for p, v in points) / sum((p - mx) ** 2 for p, _ in points)


def series(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    out: dict[tuple[str, str], list[Cell]] = {}
    for cell in (c for c in cells if not c.skipped):
        out.setdefault((cell.variant, cell.path), []).append(cell)
    return out


def growth_lines(cells: list[Cell]) -> list[str]:
    lines = []
    for (variant, path), run in series(cells).items():
        memory, time = slope(run, lambda c: c.memory.extra_peak), slope(run, lambda c: c.timing.wall)
        if memory is not None:
            lines.append(f"- {VARIANTS[variant].label} {path}: memory ~ P^{memory:.2f}, time ~ P^{time:.2f}")
    return lines


def plot(cells: list[Cell], args) -> str:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    for (variant, path), run in series(cells).items():
        style = {"linestyle": {"fused": "-", "materialized": "--"}.get(path, ":"), "marker": "o"}
        for ax, value in zip(axes, (lambda c: c.timing.wall, lambda c: c.memory.extra_peak / 2**20), strict=True):
            ax.plot([c.positions for c in run], [value(c) for c in run], **style, label=f"{variant} {path}")
    for ax, label in zip(axes, ("fwd+bwd seconds", "extra peak MiB"), strict=True):
        ax.set(xscale="log", yscale="log", xlabel="positions P = H x W", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"context blocks fwd+bwd, N={args.batch}, C={CHANNELS}, {args.precision}, {args.device}", fontsize=9)
    return save_figure(fig, args.output)


def target_lines(train: list[Cell], whole: list[Cell], args) -> list[str]:
    """The issue's targets on the cells that have them: P = 9409 ratios, the whole image's fused memory, and with
    --scaling DNL's fused / materialised memory at the largest P where both ran."""

    def verdict(ok: bool, text: str) -> str:
        return f"- {'PASS' if ok else 'FAIL'} {text}"

    lines, largest = [], {}
    for cells, setting in ((train, "fwd+bwd"), (whole, "whole-image forward")):
        ran = {(c.variant, c.path, c.grid): c for c in cells if not c.skipped}
        for c in (c for c in cells if c.path == "fused" and (c.variant, "materialized", c.grid) in ran):
            mat = ran[c.variant, "materialized", c.grid]
            time, memory = c.timing.wall / mat.timing.wall, c.memory.extra_peak / mat.memory.extra_peak
            name = f"{VARIANTS[c.variant].label} {setting} P={c.positions}"
            if c.grid == (97, 97):
                fraction = c.rate(True) / c.matmul_rate
                lines.append(verdict(time <= TARGETS["time"], f"{name} fused/mat. time {time:.3f} <= 0.7"))
                lines.append(verdict(memory <= TARGETS["memory"], f"{name} fused/mat. memory {memory:.3f} <= 0.2"))
                lines.append(verdict(fraction >= TARGETS["rate"], f"{name} fused at {fraction:.0%} of matmul >= 70%"))
            if c.variant == "dnl":
                largest[setting] = (name, memory)
    for c in (c for c in whole if c.path == "fused" and c.variant in MMSEG_KINDS):
        gb = c.memory.extra_peak / 1e9
        lines.append(
            verdict(gb < 1.5, f"{VARIANTS[c.variant].label} whole image fused {gb:.2f} GB above the input < 1.5")
        )
    for name, memory in largest.values() if args.scaling else ():
        lines.append(
            verdict(memory <= TARGETS["scaling_memory"], f"{name} fused/mat. memory 1/{1 / memory:.0f} <= 1/20")
        )
    return lines


def lab_report(train: list[BlockCell], whole: list[BlockCell], args) -> list[str]:
    if not train and not whole:
        return []
    return [
        "## The other heads' blocks beside mmseg 1.2.2's own modules",
        "",
        f"C={CHANNELS} (AFNB: stage-3 map C/2, C'=C/8; OCR: 19 classes), {args.precision}; N={args.batch} fwd+bwd "
        "(train mode), N=1 whole-image forward (eval, no_grad); path `-`: the block's one way to compute; interleaved "
        "rounds as above.",
        "",
        *lab_target_lines(train, whole),
        "",
        *lab_table(train + whole),
        "",
    ]


def report(train: list[Cell], whole: list[Cell], core: dict[str, Timing] | None, args) -> list[str]:
    title = "Resolution scaling of the context blocks" if args.scaling else "Context blocks: fused vs materialised"
    hw = whole[0].grid if whole else WHOLE_IMAGE
    lines = args.run.header(title, args.device, SEED)
    lines += [
        f"- time: median of {args.repeats} interleaved rounds (whole image: {args.whole_repeats}) after a warmup and "
        "the memory run; extra peak memory above the input: CUDA `max_memory_allocated`, CPU the running sum of "
        "`torch.profiler` allocator events; RSS: resident-set high-water mark above the resident set before",
        f"- C={CHANNELS}, C'={CHANNELS // 2} (GC: its own bottleneck), {args.precision}; mmseg: mmseg 1.2.2's "
        "blocks, materialised" + ("" if args.mmseg else " (not installed or --no-mmseg: left out)"),
        "",
        "## Targets",
        "",
        *target_lines(train, whole, args),
        "",
        f"## Forward + backward, train mode, N={args.batch}",
        "",
        *table(train, train=True),
        "",
        "SDPA kernel: " + "; ".join(sorted({f"{c.variant}: {c.kernel}" for c in train if c.path == "fused"})),
        "",
        "## Growth with P (least squares on log-log)",
        "",
        *growth_lines(train),
        "",
        plot(train, args),
        "",
        f"## Whole-image forward, eval, no_grad, N=1, P={hw[0] * hw[1]} ({hw[0]} x {hw[1]})",
        "",
        *table(whole, train=False),
        "",
    ]
    if core is not None:
        p = args.grids[-1][0] * args.grids[-1][1]
        lines += [f"## The attention alone, fwd+bwd, P={p}: SDPA vs plain softmax(Q K^T) V", ""]
        lines += markdown_table(
            ["SDPA s", "plain s", "time SDPA/plain", "CPU time SDPA/plain"],
            [
                [
                    f"{core['SDPA'].wall:.3f}",
                    f"{core['plain'].wall:.3f}",
                    ratio(core["SDPA"].wall, core["plain"].wall),
                    ratio(core["SDPA"].cpu, core["plain"].cpu),
                ]
            ],
        )
    return lines


def parse_args(argv: list[str] | None):
    scaling = "--scaling" in (sys.argv[1:] if argv is None else argv)
    parser = benchmark_parser(
        __doc__, Path(__file__).with_name(f"{'resolution_scaling' if scaling else 'context_blocks'}.md")
    )
    names = [name for name, variant in VARIANTS.items() if variant.block is not None]
    parser.add_argument("--variants", nargs="*", default=["dnl", "nl", "gc"], choices=names)
    parser.add_argument("--blocks", nargs="*", default=list(BLOCKS), choices=list(BLOCKS), help="of BLOCKS (none: -)")
    parser.add_argument("--scaling", action="store_true", help="N=1, P = 1024 ... 32768 -> resolution_scaling.md")
    parser.add_argument("--batch", type=int, default=None, help="N (default 2; --scaling: 1, with --paper 2)")
    parser.add_argument("--precision", default="32-true", choices=list(PRECISIONS))
    parser.add_argument("--whole-repeats", type=int, default=1, help="timed rounds of the whole image")
    parser.add_argument("--max-positions", type=int, default=32768, help="largest P of --scaling (--quick: 8192)")
    parser.add_argument("--max-materialized-gib", type=float, default=18.0, help="skip larger materialised runs")
    parser.add_argument("--no-mmseg", action="store_true", help="leave mmseg's blocks out even where installed")
    args = parse(parser, argv)
    args.mmseg = not args.no_mmseg and mmseg_available()
    args.batch = args.batch or (1 if args.scaling and not args.paper else 2)
    if args.quick:
        args.max_positions = min(args.max_positions, 8192)
    sweep = [g for g in SCALING_GRIDS if g[0] * g[1] <= args.max_positions]
    args.grids = [(8, 8), (8, 16), (12, 12)] if args.tiny else sweep if args.scaling else CROP_GRIDS
    args.whole = (16, 32) if args.tiny else WHOLE_IMAGE
    args.repeats = args.repeats or (1 if args.quick or args.tiny else 2 if args.scaling else 3)
    args.square = 256 if args.tiny else 2048 if args.quick else 4096
    return args


def main(argv: list[str] | None = None) -> tuple[list[Cell], list[Cell], list[BlockCell], list[BlockCell]]:
    args = parse_args(argv)
    train, whole, lab_train, lab_whole = [], [], [], []
    if args.variants:
        for grid in args.grids:
            print(f"forward + backward at {grid[0]} x {grid[1]} ...", flush=True)
            train += bench(grid, args.batch, True, args)
        print("whole-image forward ...", flush=True)
        whole = bench(args.whole, 1, False, args)
    if args.blocks and not args.scaling:
        print(f"BLOCKS: forward + backward at {args.grids[-1][0]} x {args.grids[-1][1]} ...", flush=True)
        lab_train = bench_lab_blocks(args.grids[-1], args.batch, True, args)
        print("BLOCKS: whole-image forward ...", flush=True)
        lab_whole = bench_lab_blocks(args.whole, 1, False, args)
    core = None if args.scaling or not args.variants else attention_alone(args.grids[-1], args)
    lines = report(train, whole, core, args) if args.variants else args.run.header("Context blocks", args.device, SEED)
    write_report(lines + lab_report(lab_train, lab_whole, args), args.output)
    return train, whole, lab_train, lab_whole


if __name__ == "__main__":
    main()
