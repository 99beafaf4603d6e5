"""Each benchmark script of the suite runs end to end at its ``--tiny`` size and writes its table and plot."""

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import their helpers as ``_measure``
    yield lambda name: importlib.import_module(name)
    scripts = ("context_blocks", "resolution_scaling", "training_step", "inference_modes", "startup_time")
    for name in ("_measure", *scripts):
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_resolution_scaling_writes_table_and_plot(scripts, tmp_path):
    output = tmp_path / "scaling.md"
    results = scripts("resolution_scaling").main(["--tiny", "--device", "cpu", "--output", str(output)])
    assert {(c.kind, c.attention) for c in results.train} == {
        (k, a) for k in ("DNL", "NL") for a in ("fused", "materialized")
    }
    assert all(c.memory.extra_peak > 0 and c.timing.wall > 0 for c in results.train)
    text = output.read_text()
    assert "| 256 (16 x 16) |" in text and "memory ~ P^" in text
    assert output.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_training_step_compares_heads_with_the_fast_path_options(scripts, tmp_path):
    output = tmp_path / "training.md"
    argv = ["--tiny", "--device", "cpu", "--precision", "bf16-mixed", "--channels-last", "--output", str(output)]
    results = scripts("training_step").main(argv)
    assert list(results) == ["baseline", "NL", "DNL"]
    assert all(r.images_per_second > 0 and r.memory.extra_peak > 0 for r in results.values())
    # The fused path's bf16 q/k/v reach PyTorch's flash kernel, not the MATH fallback.
    assert results["baseline"].sdpa_kernel == ""
    assert all(results[head].sdpa_kernel.startswith("FLASH_ATTENTION") for head in ("NL", "DNL"))
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


@pytest.mark.slow
def test_context_blocks_compares_ours_with_mmsegs_blocks(scripts, tmp_path):
    output = tmp_path / "blocks.md"
    train, whole = scripts("context_blocks").main(["--tiny", "--device", "cpu", "--output", str(output)])
    assert all(r.seconds["mmseg"].wall > 0 and r.memory["mmseg"].extra_peak > 0 for r in train)
    assert {(r.kind, r.attention) for r in whole if not r.skipped} >= {("DNL", "mmseg"), ("NL", "mmseg")}
    text = output.read_text()
    assert "## Against mmsegmentation 1.2.2's blocks" in text and "| DNL | 144 (12 x 12) |" in text


@pytest.mark.parametrize("name", ["context_blocks", "resolution_scaling", "training_step", "inference_modes"])
def test_a_gpu_run_writes_its_own_table_and_leaves_the_cpu_one(scripts, monkeypatch, name):
    """``make bench ARGS="--device cuda"`` must not overwrite the committed CPU tables ``benchmarks/<name>.md``."""
    script = scripts(name)
    assert script.parse_args([]).output == BENCHMARKS / f"{name}.md"  # no GPU here: the CPU default
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only argument parsing runs
    assert script.parse_args(["--device", "cuda"]).output == BENCHMARKS / f"{name}_cuda.md"


def test_startup_time_compares_checkouts_and_writes_its_table(scripts, monkeypatch, tmp_path):
    script = scripts("startup_time")
    monkeypatch.setattr(script, "COMMANDS", {"dnlseg --help": ["-m", "dnlseg", "--help"]})  # the fast one only
    output = tmp_path / "startup.md"
    src = Path(script.ROOT) / "src"
    results = script.main(["--repeats", "1", "--baseline-src", str(src), "--output", str(output)])
    assert set(results) == {("dnlseg --help", f"baseline ({src})"), ("dnlseg --help", "this checkout")}
    assert all(wall > 0 and cpu >= 0 for wall, cpu in results.values())
    assert "| `dnlseg --help` | this checkout |" in output.read_text()
