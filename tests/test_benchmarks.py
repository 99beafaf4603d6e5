"""Each benchmark script of the suite runs end to end at its ``--tiny`` size and writes its table (and plot)."""

import importlib
import sys
from pathlib import Path

import pytest
import torch
from matplotlib.container import ErrorbarContainer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ("context_blocks", "training_step", "inference_modes", "data_pipeline", "startup_time", "analysis_memory")


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their helpers as ``_measure``
    yield lambda name: importlib.import_module(name)
    for name in ("_measure", "callback_overhead", "export", "pointwise_conv", *SCRIPTS):
        sys.modules.pop(name, None)


def test_bar_charts_write_each_value_its_spread_over_the_rounds_and_the_device(scripts, tmp_path):
    measure = scripts("_measure")
    timing = measure.Timing(wall=0.5, cpu=0.9, wall_range=(0.4, 0.8))  # 2 images: 4 / s at the median round
    speed, spread = timing.per_second(2)
    assert (speed, spread) == (4.0, (2.5, 5.0))  # the slowest round 2.5 / s, the fastest 5 / s
    panels = [measure.Panel("images / s", [speed, 1.25], [spread, (1.0, 1.5)]), measure.Panel("MiB", [300.0, 1234.0])]
    fig = measure.bar_chart("R50, 512x512", ["baseline", "DNL"], panels, "AMD EPYC, 2 logical CPUs")
    speeds, memory = fig.axes
    assert [t.get_text() for t in speeds.texts] == ["4", "1.25"] and [t.get_text() for t in memory.texts] == [
        "300",
        "1.23e+03",
    ]
    (error_bars,) = [c for c in speeds.containers if isinstance(c, ErrorbarContainer)]
    segments = error_bars.lines[2][0].get_segments()  # (data line, caps, [vertical bar lines])
    assert [(s[0][1], s[1][1]) for s in segments] == [(2.5, 5.0), (1.0, 1.5)]  # lowest to highest round
    assert (
        not any(isinstance(c, ErrorbarContainer) for c in memory.containers)
        and "one measurement" in memory.get_ylabel()
    )  # measured once: no error bar
    assert fig._suptitle.get_text() == "R50, 512x512\nAMD EPYC, 2 logical CPUs"
    assert (
        measure.bar_figure(tmp_path / "chart.md", "t", ["a"], [measure.Panel("x", [1.0])], "cpu")
        == "![chart](chart.png)"
    )
    assert (tmp_path / "chart.png").stat().st_size > 0


def test_interleaved_timing_keeps_the_fastest_and_slowest_round(scripts, monkeypatch):
    measure = scripts("_measure")
    clock = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # rounds of 1, 3 and 2 s
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    timing = measure.time_interleaved({"step": lambda: None}, 3, torch.device("cpu"))["step"]
    assert (timing.wall, timing.wall_range) == (2.0, (1.0, 3.0))


@pytest.mark.slow
def test_context_blocks_compares_the_variants_fused_materialised_and_mmsegs(scripts, tmp_path):
    output = tmp_path / "blocks.md"
    train, whole, lab_train, lab_whole = scripts("context_blocks").main(
        ["--tiny", "--device", "cpu", "--output", str(output)]
    )
    assert {(c.variant, c.path) for c in train} == {
        *((v, p) for v in ("nl", "dnl") for p in ("fused", "materialized", "mmseg")),
        ("gc", "fused"),
    }
    assert all(c.memory.extra_peak > 0 and c.timing.wall > 0 for c in train + whole if not c.skipped)
    assert all(c.grad_difference < 1e-4 for c in train if c.path == "materialized")
    # The fused path runs PyTorch's flash kernel, the materialised paths (ours, mmseg's) no SDPA kernel at all.
    assert all(c.kernel.startswith("FLASH_ATTENTION") for c in train if c.path == "fused" and c.variant != "gc")
    assert all(c.kernel == "no fused SDPA kernel ran" for c in train if c.path != "fused" or c.variant == "gc")
    text = output.read_text()
    assert "| DNL | 144 (12 x 12) |" in text and "| GC (GCNet) | 144 (12 x 12) |" in text
    assert "## Whole-image forward" in text and "memory ~ P^" in text
    assert output.with_suffix(".png").stat().st_size > 0
    # BLOCKS beside mmseg's modules: our paths (PAM and CC: both, in training) and mmseg's, at P = 144 and 512.
    assert {(c.block, c.path) for c in lab_train} == {
        *((b, p) for b in ("pam", "cc") for p in ("fused", "materialized", "mmseg")),
        *((b, p) for b in ("cam", "apnb", "afnb", "isa", "ema", "ocr") for p in ("-", "mmseg")),
    }
    assert {(c.block, c.path) for c in lab_whole} == {(c.block, c.path) for c in lab_train if c.path != "materialized"}
    assert all(c.memory.extra_peak > 0 and c.timing.wall > 0 for c in lab_train + lab_whole if not c.skipped)
    assert "time ours/mmseg" in text and "| DANet PAM | fused | 144 (12 x 12) |" in text
    assert "PAM fwd+bwd P=144 memory ours/mmseg" in text and "CCNet criss-cross (R=2) whole-image forward P=512" in text


@pytest.mark.slow
def test_context_blocks_scaling_sweep_writes_the_scaling_target(scripts, tmp_path):
    output = tmp_path / "scaling.md"
    argv = ["--tiny", "--scaling", "--variants", "dnl", "--no-mmseg", "--output", str(output)]
    train, *_ = scripts("context_blocks").main(argv)
    assert [c.batch for c in train] == [1] * len(train)  # --scaling: N=1
    assert "fwd+bwd P=144 fused/mat. memory 1/" in output.read_text()


@pytest.mark.slow
def test_training_step_compares_heads_with_the_fast_path_options(scripts, tmp_path):
    output = tmp_path / "training.md"
    argv = ["--tiny", "--device", "cpu", "--precision", "bf16-mixed", "--channels-last", "--output", str(output)]
    results = scripts("training_step").main(argv)
    assert list(results) == ["baseline", "nl", "dnl", "gc"]
    assert all(r.images_per_second > 0 and r.memory.extra_peak > 0 for r in results.values())
    # The fused path's bf16 q/k/v reach PyTorch's flash kernel, not the MATH fallback; no attention, no kernel.
    assert results["baseline"].sdpa_kernel == results["gc"].sdpa_kernel == ""
    assert all(results[head].sdpa_kernel.startswith("FLASH_ATTENTION") for head in ("nl", "dnl"))
    text = output.read_text()
    assert "DNL step time / baseline step time" in text and "bf16-mixed, channels-last" in text
    assert output.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_inference_modes_times_whole_slide_and_multiscale_flip(scripts, tmp_path):
    output = tmp_path / "inference.md"
    results = scripts("inference_modes").main(["--tiny", "--device", "cpu", "--output", str(output)])
    assert list(results) == ["whole", "slide", "ms+flip"]
    assert results["ms+flip"].forward_passes == 12 and results["whole"].forward_passes == 1
    assert results["slide"].forward_passes > 1
    assert "| ms+flip |" in output.read_text()
    assert output.with_suffix(".png").stat().st_size > 0


@pytest.mark.parametrize(
    ("name", "argv", "table"),
    [
        ("context_blocks", [], "context_blocks"),
        ("context_blocks", ["--scaling"], "resolution_scaling"),
        ("training_step", [], "training_step"),
        ("inference_modes", [], "inference_modes"),
    ],
)
def test_a_gpu_run_writes_its_own_table_and_leaves_the_cpu_one(scripts, monkeypatch, name, argv, table):
    """``make bench ARGS="--device cuda"`` must not overwrite the committed CPU tables ``benchmarks/<name>.md``."""
    script = scripts(name)
    assert script.parse_args(argv).output == BENCHMARKS / f"{table}.md"  # no GPU here: the CPU default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only argument parsing runs
    assert script.parse_args([*argv, "--device", "cuda"]).output == BENCHMARKS / f"{table}_cuda.md"


def test_data_pipeline_reports_throughput_per_worker_and_metric_memory(scripts, tmp_path):
    output = tmp_path / "data.md"
    throughput = scripts("data_pipeline").main(["--tiny", "--output", str(output)])
    assert len(throughput) == 3 and min(throughput.values()) > 0  # two training crops and the evaluation item
    text = output.read_text()
    name = "train item, 769x769 crop (decode + augmentation)"
    assert f"| {name} | {throughput[name]:.1f} |" in text and "| decode image PNG (OpenCV) |" in text


@pytest.mark.slow
def test_callback_overhead_times_the_three_callback_sets(scripts, tmp_path):
    output = tmp_path / "callbacks.md"
    medians = scripts("callback_overhead").main(["--tiny", "--output", str(output)])
    assert list(medians) == ["none", "monitor", "monitor + probe"] and all(w > 0 for w, _ in medians.values())
    assert "| monitor + probe |" in output.read_text()


def test_pointwise_conv_compares_the_products_with_onednn_per_layout(scripts, tmp_path):
    output = tmp_path / "pointwise.md"
    rows = scripts("pointwise_conv").main(["--tiny", "--output", str(output)])
    assert [row[1] for row in rows] == ["contiguous", "channels last"]
    assert all(float(value) > 0 for row in rows for value in row[2:])
    assert "| fwd+bwd pointwise/conv |" in output.read_text()


def test_startup_time_compares_checkouts_and_writes_its_table(scripts, monkeypatch, tmp_path):
    script = scripts("startup_time")
    monkeypatch.setattr(script, "COMMANDS", {"dnlseg --help": ["-m", "dnlseg", "--help"]})  # the fast one only
    output = tmp_path / "startup.md"
    src = Path(script.ROOT) / "src"
    results = script.main(["--repeats", "1", "--baseline-src", str(src), "--output", str(output)])
    assert set(results) == {("dnlseg --help", f"baseline ({src})"), ("dnlseg --help", "this checkout")}
    assert all(wall > 0 and cpu >= 0 for wall, cpu in results.values())
    assert "| `dnlseg --help` | this checkout |" in output.read_text()


@pytest.mark.slow
def test_analysis_memory_runs_dnlseg_analyze_and_reads_its_metrics(scripts, tmp_path):
    output = tmp_path / "analysis.md"
    results = scripts("analysis_memory").main(["--tiny", "--output", str(output)])
    assert set(results) == {("this checkout", 64), ("this checkout", 128)}
    for result in results.values():
        assert result["returncode"] == 0 and result["peak_rss"] > 100 * 2**20 and result["figures"] == 1
        assert all(value is not None for value in result["metrics"].values())
    assert "| this checkout | 128 |" in output.read_text()


def test_analysis_memory_judges_the_targets_and_says_what_the_baseline_cannot_run(scripts, monkeypatch, tmp_path):
    """The table logic on stand-in runs: a metric left out is 'no', the targets are judged on peak RSS, and the
    old sources get no (height, width) run."""
    script = scripts("analysis_memory")
    peaks = {16384: 1.4e9, 32768: 3.1e9}
    monkeypatch.setattr(script, "fit_checkpoint", lambda src, config, folder: folder / "last.ckpt")

    def analyze(src, config, ckpt, image_size, output):
        positions = 16384 if image_size == "1024" else 32768
        metrics = {name: 1.0 for name in script.METRICS}
        if src != script.ROOT / "src":
            metrics[script.METRICS[1]] = None  # the old code skipped one
        return {
            "peak_rss": peaks[positions],
            "wall": 1.0,
            "cpu": 1.0,
            "returncode": 0,
            "metrics": metrics,
            "figures": 1,
        }

    monkeypatch.setattr(script, "analyze", analyze)
    output = tmp_path / "analysis.md"
    script.main(["--baseline-src", str(tmp_path / "before" / "src"), "--output", str(output)])
    lines = output.read_text().splitlines()

    def row(sources: str, positions: int) -> str:
        (line,) = [line for line in lines if line.startswith(f"| {sources}") and f" | {positions} | " in line]
        return line

    assert "| no |" in row("before", 16384) and "not run" in row("before", 32768)
    assert "| yes |" in row("this checkout", 16384) and "PASS <= 1.5 GB" in row("this checkout", 16384)
    assert "FAIL <= 3 GB" in row("this checkout", 32768)


def test_analysis_memory_per_head_counts_a_metric_the_report_explains_and_flags_a_silent_gap(
    scripts, monkeypatch, tmp_path
):
    """Several configs: one row per head and size; a metric without value is accounted for only by a reason in
    analyze's report (ANN's boundary metric), a metric missing without one is a gap ("no")."""
    script = scripts("analysis_memory")
    monkeypatch.setattr(script, "fit_checkpoint", lambda src, config, folder: folder / "last.ckpt")
    explained = [{"block": "decode_head.context", "analysis": "boundary_consistency", "reason": "pyramid cells"}]

    def analyze(src, config, ckpt, image_size, output):
        metrics = {script.METRICS[0]: 1.5, script.METRICS[1]: None}
        reasons = explained if "annnet" in config else []
        return {"peak_rss": 2e9, "wall": 1.0, "cpu": 1.0, "returncode": 0, "metrics": metrics,
                "not_computed": reasons, "figures": 1}  # fmt: skip

    monkeypatch.setattr(script, "analyze", analyze)
    output = tmp_path / "analysis.md"
    configs = ["configs/synthetic/annnet.yaml", "configs/synthetic/gap.yaml"]
    results = script.main(["--configs", *configs, "--positions", "32768", "--output", str(output)])
    assert set(results) == {("this checkout", "annnet", 32768), ("this checkout", "gap", 32768)}
    text = output.read_text()
    (ann,) = [line for line in text.splitlines() if line.startswith("| this checkout | annnet | 32768 |")]
    (gap,) = [line for line in text.splitlines() if line.startswith("| this checkout | gap | 32768 |")]
    assert "| yes |" in ann and "boundary_consistency of decode_head.context" in ann and "PASS <= 3 GB" in ann
    assert "| no |" in gap and "16384" not in text.split("|---")[-1]  # only the size asked for


@pytest.mark.slow
def test_export_benchmark_compares_onnxruntime_with_pytorch_per_head(scripts, tmp_path):
    output = tmp_path / "export.md"
    results = scripts("export").main(["--tiny", "--heads", "dnl", "--formulations", "chunked", "--output", str(output)])
    record = results["dnl", "chunked"]
    assert record["export"]["bytes"] > 0 and record["export"]["ops"] == "Loop 1, Softmax 1, MatMul 1"
    for size in ((64, 128), (96, 160)):
        for runtime in ("onnxruntime", "pytorch"):
            assert record[size, runtime]["latency"] > 0 and record[size, runtime]["peak"] > 0
    text = output.read_text()
    assert "| DNL | " in text and "onnxruntime peak" in text and "(target <= 1.5x)" in text
