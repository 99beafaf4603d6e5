"""Measuring helpers shared by the benchmark scripts: interleaved timing, peak memory, the SDPA kernel that ran,
the machine description, markdown/PNG output, and the segmentation model of the training and inference
benchmarks. Not a library module: the scripts import it as ``_measure``
(``python benchmarks/<script>.py`` puts ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from dnlseg.context import DisentangledNonLocal2d, NonLocal2d
from dnlseg.models import SegmentationModule

MiB = 2**20
GiB = 2**30


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Medians over the timed rounds, in seconds."""

    wall: float
    cpu: float  # process CPU time (user + system, all threads): barely moved by other processes on the CPUs


def time_round_robin(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, Timing]:
    """Median wall and CPU time of each call. One call of each per round, so load that drifts over the run
    (the machine may be shared) hits every configuration alike and the ratios stay fair."""
    walls: dict[str, list[float]] = {name: [] for name in calls}
    cpus: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            synchronize(device)
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: Timing(statistics.median(walls[name]), statistics.median(cpus[name])) for name in calls}


@dataclass
class Memory:
    """Peak memory of one call above what was allocated before it.

    Attributes:
        extra_peak: bytes, from the tensor allocator: CUDA's max_memory_allocated, or on CPU the running sum
            of the allocation/free events that torch.profiler(profile_memory=True) records from c10's CPU allocator.
        rss_peak: bytes, process resident-set high-water mark above the resident set before the call (Linux,
            CPU only, else None): an independent check that also sees memory outside PyTorch's allocator.
    """

    extra_peak: int
    rss_peak: int | None


def measure_memory(call: Callable[[], object], device: torch.device, rss: bool = False) -> Memory:
    """Peak memory of ``call()``; ``rss`` adds the resident-set check (CPU, Linux)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        synchronize(device)
        return Memory(torch.cuda.max_memory_allocated(device) - before, None)
    rss_before = reset_rss_high_water() if rss else None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    rss_peak = read_proc_status_kib("VmHWM") * 1024 - rss_before if rss_before is not None else None
    return Memory(allocator_peak(prof), rss_peak)


def allocator_peak(prof: profile) -> int:
    """Peak of the running sum of the profiler's [memory] events (+bytes on allocation, -bytes on free).

    Only blocks allocated while profiling are counted, so what existed before the call (inputs, parameters)
    is the zero line; a free of such an older block is not reported (the profiler does not know its size), so
    the figure can only err high.
    """
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def read_proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_rss_high_water() -> int | None:
    """Reset VmHWM to the current resident set (``echo 5 > /proc/self/clear_refs``); return it in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return read_proc_status_kib("VmRSS") * 1024
    except OSError:
        return None


class SdpaSpy(TorchDispatchMode):
    """Records the SDPA aten kernels that run, and ``torch._fused_sdp_choice`` for the q/k/v they receive."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[str] = []
        self.choice: str | None = None
        self.layout: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
            self.kernels.append(name)
            if self.choice is None and not name.endswith("backward"):
                q, k, v = args[:3]  # (N, 1, P, C') each
                self.choice = SDPBackend(torch._fused_sdp_choice(q, k, v)).name
                contiguous = all(t.is_contiguous() for t in (q, k, v))
                self.layout = f"{tuple(q.shape)} {'contiguous' if contiguous else f'strides {q.stride()}'}"
        return func(*args, **(kwargs or {}))

    def summary(self) -> str:
        if self.choice is None:
            return "no fused SDPA kernel ran (MATH fallback, decomposed into matmuls)"
        kernels = " + ".join(dict.fromkeys(self.kernels))
        return f"{self.choice}: {kernels}"


def run_recording_sdpa_kernel(call: Callable[[], object], compiled: bool) -> str:
    """Run ``call()`` once (a warmup) and say which SDPA kernel it ran (``SdpaSpy``). Under ``torch.compile``
    the call runs unobserved: a dispatch mode would change what the compiler traces."""
    if compiled:
        call()
        return "not recorded under --compile"
    with SdpaSpy() as spy:
        call()
    return spy.summary()


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_lines(args: argparse.Namespace, seed: int) -> list[str]:
    device = args.device
    if device.type == "cuda":
        hardware = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        hardware = f"{cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"
    return [
        f"- command: `{args.command}`",
        f"- date: {args.started:%Y-%m-%d %H:%M %Z}",
        f"- machine: {hardware}; device `{device}`",
        f"- torch {torch.__version__}, Python {platform.python_version()}, seed {seed}",
    ]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MiB:,.0f}"


@dataclass
class RunClock:
    """Wall time of the run and the share of the CPUs this process got: on a shared machine other processes
    slow every absolute time down; the fused/materialised ratios much less, as the rounds interleave."""

    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=time.process_time)  # user + system, all threads
    load: float = field(default_factory=lambda: os.getloadavg()[0])  # 1-min load average before the run

    def line(self) -> str:
        wall = time.perf_counter() - self.wall
        share = (time.process_time() - self.cpu) / (wall * torch.get_num_threads())
        return (
            f"- run took {wall:.0f} s; the process was on the CPUs {share:.0%} of wall time x "
            f"{torch.get_num_threads()} threads (1-min load average before it started: {self.load:.2f}); "
            "a low share means other processes competed for the CPUs"
        )


# ----------------------------------------------------------------------------------------------------------
# Command line and output shared by the scripts
# ----------------------------------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, output: Path) -> None:
    """``--device``, ``--output`` (the markdown report, the PNG beside it; on CUDA the default gets a ``_cuda``
    suffix so a GPU run does not overwrite the CPU tables) and ``--repeats``."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--output", type=Path, default=None, help=f"markdown report (default {output}); PNG beside it")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (median), after one warmup")
    parser.set_defaults(default_output=output)


def finish_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """Check ``--device``; record the command line and the start time for the report."""
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")
    if args.output is None:
        suffix = "_cuda" if args.device.type == "cuda" else ""
        args.output = args.default_output.with_name(f"{args.default_output.stem}{suffix}.md")
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "benchmarks/<script>.py"
    args.command = " ".join([python, script, *argv])
    args.started = datetime.datetime.now().astimezone()


def write_report(text: str, output: Path) -> None:
    print("\n" + text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}")


def figure_path(output: Path) -> Path:
    return output.with_suffix(".png")


def interleaving_line() -> str:
    return (
        "- the compared variants run interleaved (one of each per round, median over rounds), so load that drifts "
        "over the run hits them alike: the ratios stay fair when other jobs share the machine, the absolute times "
        "do not (the CPU share above says how much they competed)"
    )


PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # Lightning's names


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast Lightning's ``precision`` runs the forward under (disabled for 32-true)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def fast_path_label(args: argparse.Namespace) -> str:
    """``32-true``, ``bf16-mixed, channels-last, compile`` ...: the fast-path options of a run."""
    flags = [name for name in ("channels_last", "compile", "cudnn_benchmark") if getattr(args, name, False)]
    return ", ".join([args.precision] + [f.replace("_", "-") for f in flags])


# ----------------------------------------------------------------------------------------------------------
# The segmentation model of training_step.py and inference_modes.py
# ----------------------------------------------------------------------------------------------------------

MODEL_SEED = 0
NUM_CLASSES = 19  # Cityscapes
HEADS: dict[str, Callable[[int], torch.nn.Module] | None] = {
    "baseline": None,
    "NL": partial(NonLocal2d, reduction=2),
    "DNL": partial(DisentangledNonLocal2d, reduction=2, temperature=0.05),
}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--encoder --output-stride --head-channels --precision --channels-last --compile --cudnn-benchmark``."""
    parser.add_argument("--encoder", default="resnet50", help="smp encoder name (resnet50, resnet101, ...)")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--head-channels", type=int, default=512)
    parser.add_argument("--precision", default="32-true", choices=list(PRECISIONS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (warmup compiles)")
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="cuDNN autotuning, as `trainer.benchmark: true` (warmup tunes)"
    )


def build_module(head: str, args: argparse.Namespace) -> SegmentationModule:
    """A ``SegmentationModule`` with ``head`` (a key of ``HEADS``), weights drawn from ``MODEL_SEED``, on the device."""
    torch.manual_seed(MODEL_SEED)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark  # what Lightning's Trainer(benchmark=...) sets
    module = SegmentationModule(
        NUM_CLASSES,
        encoder_name=args.encoder,
        output_stride=args.output_stride,
        head_channels=args.head_channels,
        context=HEADS[head],
        channels_last=args.channels_last,
        compile=args.compile,
    )
    return module.to(args.device)
