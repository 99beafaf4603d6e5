"""Plumbing shared by the benchmark scripts: interleaved timing, peak memory (CPU and CUDA), the SDPA
kernel that ran, child processes with their peak resident set, the machine description, markdown tables, figures,
the common command line, and the segmentation model of the training and inference benchmarks.

Not a library module: ``python benchmarks/<script>.py`` puts ``benchmarks/`` on ``sys.path``, so every script
imports this file as ``_measure``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20
GiB = 2**30


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Medians over the timed rounds, in seconds, and the spread of the wall times."""

    wall: float
    cpu: float  # process CPU time (user + system, all threads): barely moved by other processes on the CPUs
    wall_range: tuple[float, float] = (math.nan, math.nan)  # fastest and slowest round

    def per_second(self, items: float) -> tuple[float, tuple[float, float]]:
        """``items`` per second at the median round, and its range over the rounds (slowest, fastest)."""
        return items / self.wall, (items / self.wall_range[1], items / self.wall_range[0])


def time_interleaved(calls: dict, repeats: int, device: torch.device) -> dict:
    """Median wall and CPU time of each call. One call of each per round, so load that drifts over the run
    (the machine may be shared) hits every configuration alike and the ratios stay fair."""
    samples: dict = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            synchronize(device)
            samples[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    timings = {}
    for name, runs in samples.items():
        walls, cpus = zip(*runs, strict=True)
        timings[name] = Timing(statistics.median(walls), statistics.median(cpus), (min(walls), max(walls)))
    return timings


@dataclass
class Memory:
    """Peak memory of one call above what was allocated before it, in bytes.

    Attributes:
        extra_peak: from the tensor allocator: CUDA's ``max_memory_allocated``, or on CPU the running sum of the
            allocation/free events ``torch.profiler(profile_memory=True)`` records from c10's CPU allocator.
        rss_peak: resident-set high-water mark above the resident set before the call (Linux, CPU; else None).
    """

    extra_peak: int
    rss_peak: int | None = None


def measure_memory(call: Callable[[], object], device: torch.device, rss: bool = False) -> Memory:
    """Peak memory of ``call()``; ``rss`` adds the resident-set check (CPU, Linux)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        synchronize(device)
        return Memory(torch.cuda.max_memory_allocated(device) - before)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        rss_peak = rss_above(call) if rss else call()
    return Memory(allocator_peak(prof), rss_peak if rss else None)


def allocator_peak(prof: profile) -> int:
    """Peak of the running sum of the profiler's [memory] events (+bytes on allocation, -bytes on free).

    Blocks allocated before profiling are the zero line; a free of one of them is not reported (the profiler does
    not know its size), so the figure can only err high.
    """
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def rss_above(call: Callable[[], object]) -> int | None:
    """Resident-set high-water mark during ``call()`` above the resident set before it (Linux; else None)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    except OSError:
        call()
        return None
    before = proc_status_bytes("VmRSS")
    call()
    return proc_status_bytes("VmHWM") - before


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MiB:,.0f}"


class SdpaSpy(TorchDispatchMode):
    """Records the SDPA aten kernels that run, and ``torch._fused_sdp_choice`` for the q/k/v they receive."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: list[str] = []
        self.choice: str | None = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "scaled_dot_product" in name or "flash_attention" in name or "efficient_attention" in name:
            self.kernels.append(name)
            if self.choice is None and not name.endswith("backward"):
                q, k, v = args[:3]  # (N, heads, P, C') each
                self.choice = SDPBackend(torch._fused_sdp_choice(q, k, v)).name
        return func(*args, **(kwargs or {}))

    def summary(self) -> str:
        if self.choice is None:
            return "no fused SDPA kernel ran"
        return f"{self.choice}: {' + '.join(dict.fromkeys(self.kernels))}"


def sdpa_kernel_of(call: Callable[[], object], compiled: bool = False) -> str:
    """Run ``call()`` once and say which SDPA kernel it ran. Under ``torch.compile`` it runs unobserved (a dispatch
    mode would change what the compiler traces)."""
    if compiled:
        call()
        return "not recorded under --compile"
    with SdpaSpy() as spy:
        call()
    return spy.summary()


@dataclass
class Finished:
    """A child process that ended: exit code, wall and CPU seconds, peak resident set (bytes), its output."""

    returncode: int
    wall: float
    cpu: float
    peak_rss: int
    output: str  # stdout + stderr when captured, else ""


def dnlseg(*args: str) -> list[str]:
    """The command line of ``dnlseg ARGS`` in this interpreter (what the console script runs)."""
    return [sys.executable, "-m", "dnlseg", *args]


def environment(src: Path) -> dict:
    """This process's environment with ``src`` (a checkout's sources) first on PYTHONPATH."""
    paths = [str(src), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def run(argv: list[str], cwd: Path = ROOT, env: dict | None = None, output: str = "show", check=True) -> Finished:
    """Run ``argv`` to its end; what it cost comes from ``os.wait4`` (the rusage of this child alone).
    ``output``: "show" (inherit), "capture" (into ``Finished.output``) or "drop"."""
    print("$", shlex.join(map(str, argv)), flush=True)
    with tempfile.TemporaryFile("w+") as log:
        sink = {"capture": log, "drop": subprocess.DEVNULL}.get(output)
        start = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT if sink else None)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if check and process.returncode:
        sys.stdout.write(text[-4000:])
        raise subprocess.CalledProcessError(process.returncode, argv)
    return Finished(process.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, text)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device | None = None) -> str:
    """``AMD EPYC, 2 logical CPUs, 2 torch threads`` (the GPU's name and CUDA version on CUDA)."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"{cpu_model()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads"


def machine(device: torch.device | None = None) -> str:
    """``AMD EPYC, 2 logical CPUs, 2 torch threads; torch 2.14.1, Python 3.11.7`` (the GPU's name on CUDA)."""
    return f"{hardware(device)}; torch {torch.__version__}, Python {platform.python_version()}"


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this script was started, with the interpreter relative to the working directory where it lies in it."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    script = os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else "<script>.py"
    return shlex.join([python, script, *(sys.argv[1:] if argv is None else argv)])


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its children that ended."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@dataclass
class Run:
    """The command, start time and CPU use of one benchmark run, for its report's header."""

    command: str
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now().astimezone())
    wall: float = field(default_factory=time.perf_counter)
    cpu: float = field(default_factory=lambda: cpu_seconds())
    load: float = field(default_factory=lambda: os.getloadavg()[0])

    def header(self, title: str, device: torch.device | None = None, seed: int | None = None) -> list[str]:
        """Title, command, date, machine, and how long the run took with the CPU share this process got (low:
        other processes competed for the CPUs; for a script that measures child processes, theirs count)."""
        wall = time.perf_counter() - self.wall
        share = (cpu_seconds() - self.cpu) / (wall * torch.get_num_threads())
        return [
            f"# {title}",
            "",
            f"- command: `{self.command}`",
            f"- date: {self.started:%Y-%m-%d %H:%M %Z}",
            f"- machine: {machine(device)}" + (f"; device `{device}`" if device is not None else ""),
            f"- run took {wall:.0f} s, this process on the CPUs {share:.0%} of it x {torch.get_num_threads()} "
            f"threads; 1-min load average {self.load:.2f} before, {os.getloadavg()[0]:.2f} after"
            + (f"; seed {seed}" if seed is not None else ""),
        ]


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def write_report(lines: list[str], output: Path) -> str:
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"written to {output}")
    return text


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display), imported only by the scripts that plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def save_figure(fig, output: Path) -> str:
    """Save ``fig`` as the PNG beside the report ``output``; returns the markdown line that shows it."""
    path = output.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return f"![{output.stem}]({path.name})"


@dataclass
class Panel:
    """One bar chart of a figure: its y label, a value per name and, for values timed over rounds, their range."""

    label: str
    values: list[float]
    spread: list[tuple[float, float]] | None = None  # (lowest, highest) per name: drawn as error bars


def bar_chart(title: str, names: list[str], panels: list[Panel], device: str):
    """One bar chart per panel, side by side: each bar with its value written on it and, where the panel has a
    spread, an error bar from its lowest to its highest round; ``device`` (``hardware()``) in the title."""
    fig, axes = pyplot().subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for ax, panel, colour in zip(axes[0], panels, ("tab:blue", "tab:orange", "tab:green"), strict=False):
        error = None
        if panel.spread is not None:
            error = [[v - lo for v, (lo, _) in zip(panel.values, panel.spread, strict=True)],
                     [hi - v for v, (_, hi) in zip(panel.values, panel.spread, strict=True)]]  # fmt: skip
        ax.bar(names, panel.values, color=colour, yerr=error, capsize=4, ecolor="black")
        tops = [hi for _, hi in panel.spread] if panel.spread is not None else panel.values
        for x, (value, top) in enumerate(zip(panel.values, tops, strict=True)):  # above the bar and its error bar
            ax.annotate(f"{value:.3g}", (x, top), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
        ax.set_ylim(0, max(tops) * 1.12)
        what = "median; error bar: lowest to highest round" if panel.spread is not None else "one measurement"
        ax.set_ylabel(f"{panel.label}\n({what})", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{title}\n{device}", fontsize=8)
    return fig


def bar_figure(output: Path, title: str, names: list[str], panels: list[Panel], device: str) -> str:
    """``bar_chart`` saved as the PNG beside ``output``; returns the markdown line that shows it."""
    return save_figure(bar_chart(title, names, panels, device), output)


def benchmark_parser(doc: str, output: Path, device: bool = True) -> argparse.ArgumentParser:
    """``--output`` (the markdown report, PNG beside it), ``--repeats``, ``--quick``, ``--tiny``, ``--paper`` and, with
    ``device``, ``--device`` (a CUDA run's default report gets a ``_cuda`` suffix: the CPU tables stay)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help=f"markdown report (default {output.name})")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (median)")
    parser.add_argument("--quick", action="store_true", help="a shorter run")
    parser.add_argument("--tiny", action="store_true", help="a run of seconds that checks the script works")
    parser.add_argument("--paper", action="store_true", help="the recipes' sizes (batch 2, Cityscapes crops)")
    if device:
        parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.set_defaults(default_output=output)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; check ``--device``; fill ``output``; ``args.run`` records the command and the start."""
    args = parser.parse_args(argv)
    suffix = ""
    if hasattr(args, "device"):
        args.device = torch.device(args.device)
        if args.device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu")
        suffix = "_cuda" if args.device.type == "cuda" else ""
    if args.output is None:
        args.output = args.default_output.with_name(f"{args.default_output.stem}{suffix}.md")
    args.run = Run(command_line(argv))
    return args


# ----------------------------------------------------------------------------------------------------------
# The segmentation model of training_step.py and inference_modes.py
# ----------------------------------------------------------------------------------------------------------

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}  # Lightning's names
NUM_CLASSES = 19  # Cityscapes


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast Lightning's ``precision`` runs the forward under (disabled for 32-true)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--encoder --output-stride --head-channels --precision --channels-last --compile --cudnn-benchmark``."""
    parser.add_argument("--encoder", default="resnet50", help="smp encoder name (resnet50, resnet101, ...)")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--head-channels", type=int, default=512)
    parser.add_argument("--precision", default="32-true", choices=list(PRECISIONS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (warmup compiles)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN autotuning (trainer.benchmark)")


def fast_path_label(args: argparse.Namespace) -> str:
    """``32-true``, ``bf16-mixed, channels-last, compile`` ...: the fast-path options of a run."""
    flags = [name for name in ("channels_last", "compile", "cudnn_benchmark") if getattr(args, name, False)]
    return ", ".join([args.precision] + [f.replace("_", "-") for f in flags])


def build_module(variant: str, args: argparse.Namespace, seed: int = 0):
    """A ``SegmentationModule`` whose head is ``dnlseg.context.VARIANTS[variant]``, weights drawn from ``seed``."""
    from dnlseg.context import VARIANTS
    from dnlseg.models import SegmentationModule
    from dnlseg.models.encoder import EncoderOptions
    from dnlseg.models.module import RuntimeOptions
    from dnlseg.models.network import NetworkOptions

    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark  # what Lightning's Trainer(benchmark=...) sets
    block = VARIANTS[variant]
    network = NetworkOptions(
        encoder=EncoderOptions(name=args.encoder, output_stride=args.output_stride),
        head_channels=args.head_channels,
        context=None if block.block is None else block.build,
    )
    runtime = RuntimeOptions(channels_last=args.channels_last, compile=args.compile)
    module = SegmentationModule(NUM_CLASSES, network=network, runtime=runtime)
    return module.to(args.device)


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)
