"""``dnlseg export`` per head: export time and file size, and onnxruntime against PyTorch eager (latency, peak
memory) at 512x1024 and on the whole 1024x2048 Cityscapes image; then the DNL head with each ONNX attention
formulation (``dnlseg.deploy.onnx_attention``).

    make bench-export                                       # R50-D8 recipe, every head -> benchmarks/export.md
    .venv/bin/python benchmarks/export.py --quick           # 128x256 and 256x512, three heads
    .venv/bin/python benchmarks/export.py --tiny            # seconds: the synthetic ResNet-18 config, 64x128

Every export and every inference runs in a child process of its own (``_export_child.py``); its peak memory is the
child's peak resident set (``wait4``'s ru_maxrss), its latency the median over the timed runs after one warm-up
run. The weights are the config's initial ones (no checkpoint): time and memory
do not depend on their values.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from _measure import ROOT, GiB, available_bytes, benchmark_parser, dnlseg, markdown_table, parse, run, write_report

RECIPE = "configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml"
TINY_CONFIG = "configs/synthetic/dnl.yaml"
SIZES = {"full": [(512, 1024), (1024, 2048)], "quick": [(128, 256), (256, 512)], "tiny": [(64, 128), (96, 160)]}
QUICK_HEADS = ("baseline", "dnl", "gc")
FORMULATION_HEAD = "dnl"
TARGET = 1.5  # onnxruntime's peak resident set <= 1.5 x PyTorch eager's, whole image, DNL head (the issue)
CHILD = Path(__file__).with_name("_export_child.py")
ATTENTION_OPS = ("Loop", "MultiHeadAttention", "Attention", "Softmax", "MatMul")


def context_json(variant: str) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from dnlseg.context import VARIANTS

    return json.dumps(VARIANTS[variant].context_config())


def export(config: str, variant: str, attention: str, output: Path) -> dict:
    argv = ["export", "-c", config, f"--model.network.context={context_json(variant)}", "--output", str(output)]
    argv += ["--attention", attention, "--no_check"]
    if attention == "attention_op":
        argv += ["--opset", "23"]
    finished = run(dnlseg(*argv), output="capture", check=False)
    if finished.returncode:
        return {"error": finished.output.strip().splitlines()[-1]}
    return {"wall": finished.wall, "peak": finished.peak_rss, "bytes": output.stat().st_size, "ops": ops_of(output)}


def ops_of(path: Path) -> str:
    """The top-level operators that carry attention, counted: e.g. ``Loop 1, Softmax 1, MatMul 1``."""
    import onnx

    counts = Counter(node.op_type for node in onnx.load(path, load_external_data=False).graph.node)
    return ", ".join(f"{op} {counts[op]}" for op in ATTENTION_OPS if counts[op]) or "none"


def infer(runtime: str, size: tuple[int, int], repeats: int, model: Path | None, config: str, variant: str) -> dict:
    """One child: latency and peak memory of ``runtime`` on a uint8 image of ``size``."""
    script = [sys.executable, str(CHILD), runtime, "--size", *map(str, size), "--repeats", str(repeats)]
    script += ["--model", str(model)] if runtime == "onnxruntime" else ["--config", config]
    script += ["--context", context_json(variant)]
    finished = run(script, output="capture", check=False)
    if finished.returncode:
        lines = finished.output.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {finished.returncode}"}
    result = json.loads(finished.output.strip().splitlines()[-1])
    return result | {"peak": finished.peak_rss, "latency": statistics.median(result["times"])}


def materialized_bytes(size: tuple[int, int], stride: int = 8) -> int:
    """(P, P) float32 logits and weights, both live: what a materialising formulation needs on top."""
    positions = (size[0] // stride) * (size[1] // stride)
    return 2 * 4 * positions**2


def gb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.2f}"


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"), device=False)
    parser.add_argument("--heads", nargs="+", default=None, help="variants of dnlseg.context.VARIANTS (default all)")
    parser.add_argument("--formulations", nargs="+", default=["chunked", "mha", "attention_op", "materialized"])
    parser.add_argument("--config", default=None, help=f"the config exported (default {RECIPE})")
    args = parse(parser, argv)
    sys.path.insert(0, str(ROOT / "src"))
    from dnlseg.context import VARIANTS

    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    config = args.config or (TINY_CONFIG if args.tiny else RECIPE)
    sizes = SIZES[mode]
    heads = args.heads or (list(QUICK_HEADS) if mode != "full" else list(VARIANTS))
    repeats = args.repeats or (1 if mode == "tiny" else 2)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="dnlseg-bench-export-") as tmp:
        # The DNL head and its formulations first (the question the report answers), then the other heads; the
        # report is rewritten after each setting, so an interrupted run leaves the rows it measured.
        first = [FORMULATION_HEAD] if FORMULATION_HEAD in heads else []
        settings = [(head, "chunked") for head in first]
        settings += [(FORMULATION_HEAD, f) for f in args.formulations if f != "chunked"]
        settings += [(head, "chunked") for head in heads if head not in first]
        for head, formulation in settings:
            path = Path(tmp) / f"{head}-{formulation}.onnx"
            record = {"export": export(config, head, formulation, path)}
            for size in sizes:
                if "error" in record["export"]:
                    break
                if formulation in ("attention_op", "materialized"):
                    needed = materialized_bytes(size) + 2 * GiB
                    if available_bytes(torch.device("cpu")) < needed:
                        record[size, "onnxruntime"] = {"error": f"not run: needs ~{needed / 1e9:.0f} GB free"}
                        continue
                record[size, "onnxruntime"] = infer("onnxruntime", size, repeats, path, config, head)
                if formulation == "chunked":
                    record[size, "pytorch"] = infer("pytorch", size, repeats, None, config, head)
            path.unlink(missing_ok=True)
            results[head, formulation] = record
            write(args, config, sizes, results, repeats, pending=len(settings) - len(results))
    return results


def cell(record: dict, size, runtime: str, key: str) -> str:
    value = record.get((size, runtime), {})
    if "error" in value:
        return "error"
    if key == "latency":
        return f"{value['latency']:.2f}" if "latency" in value else "-"
    return gb(value.get(key))


def write(args, config: str, sizes, results: dict, repeats: int, pending: int = 0) -> None:
    from dnlseg.context import VARIANTS

    size_names = ["x".join(map(str, s)) for s in sizes]
    header = ["head", "export s", "file MB", "attention ops in the graph"]
    for name in size_names:
        header += [f"{name} PyTorch s", f"{name} ORT s", f"{name} PyTorch peak GB", f"{name} ORT peak GB"]
    rows, notes = [], []
    for (head, formulation), record in results.items():
        if formulation != "chunked":
            continue
        ex = record["export"]
        if "error" in ex:
            rows.append([VARIANTS[head].label, "error", "-", ex["error"]] + ["-"] * 4 * len(sizes))
            continue
        row = [VARIANTS[head].label, f"{ex['wall']:.0f}", f"{ex['bytes'] / 1e6:.1f}", ex["ops"]]
        for size in sizes:
            row += [cell(record, size, "pytorch", "latency"), cell(record, size, "onnxruntime", "latency")]
            row += [cell(record, size, "pytorch", "peak"), cell(record, size, "onnxruntime", "peak")]
        rows.append(row)
        for key, value in record.items():
            if isinstance(value, dict) and "error" in value and key != "export":
                notes.append(f"- {VARIANTS[head].label}, {key}: {value['error']}")

    dnl = results.get((FORMULATION_HEAD, "chunked"), {})
    form_header = ["formulation", "graph", "export s", *[f"{n} ORT s" for n in size_names]]
    form_header += [f"{n} ORT peak GB" for n in size_names] + [f"{n} ORT / PyTorch peak" for n in size_names]
    form_rows = []
    from dnlseg.deploy.onnx_attention import FORMULATIONS

    for (head, formulation), record in results.items():
        if head != FORMULATION_HEAD:
            continue
        ex = record["export"]
        row = [formulation, FORMULATIONS[formulation].graph, "error" if "error" in ex else f"{ex['wall']:.0f}"]
        row += [cell(record, size, "onnxruntime", "latency") for size in sizes]
        row += [cell(record, size, "onnxruntime", "peak") for size in sizes]
        for size in sizes:
            ort, torch_ = record.get((size, "onnxruntime"), {}), dnl.get((size, "pytorch"), {})
            ratio = ort.get("peak", 0) / torch_["peak"] if "peak" in ort and "peak" in torch_ else None
            row.append("-" if ratio is None else f"{ratio:.2f}")
        form_rows.append(row)
        if "error" in ex:
            notes.append(f"- {formulation}: export failed: {ex['error']}")
        for size in sizes:
            value = record.get((size, "onnxruntime"), {})
            if "error" in value:
                notes.append(f"- {formulation}, {'x'.join(map(str, size))}: {value['error']}")

    verdict = []
    whole = sizes[-1]
    ort, torch_ = dnl.get((whole, "onnxruntime"), {}), dnl.get((whole, "pytorch"), {})
    if "peak" in ort and "peak" in torch_:
        ratio = ort["peak"] / torch_["peak"]
        verdict = [
            f"- DNL, {'x'.join(map(str, whole))}, default formulation (chunked): onnxruntime peak {gb(ort['peak'])} GB "
            f"vs PyTorch eager {gb(torch_['peak'])} GB = {ratio:.2f}x: "
            f"{'PASS' if ratio <= TARGET else 'FAIL'} (target <= {TARGET}x)",
            f"- resident set before the first inference (imports, weights): onnxruntime "
            f"{gb(ort['before'])} GB, PyTorch {gb(torch_['before'])} GB; growth during inference: onnxruntime "
            f"{gb(ort['peak'] - ort['before'])} GB, PyTorch {gb(torch_['peak'] - torch_['before'])} GB",
        ]
    import onnxruntime

    lines = args.run.header("Export: ONNX / onnxruntime against PyTorch eager")
    lines += [
        f"- config `{config}` (its initial weights), each head of `dnlseg.context.VARIANTS` set as "
        "`model.network.context`; "
        f"a uint8 RGB image, batch 1; onnxruntime {onnxruntime.__version__} (CPU, default session options)",
        f"- latency: median of {repeats} run(s) after one warm-up run, in a child process per setting; peak: the "
        "child's peak resident set (wait4 ru_maxrss), imports and weights included; 1 GB = 1e9 B",
        "- export s: the whole `dnlseg export` command (start-up, building the model, tracing, writing), --no_check",
        "",
        "## Per head (default attention formulation: chunked)",
        "",
        *markdown_table(header, rows),
        "",
        "## Attention formulations of the DNL head",
        "",
        *markdown_table(form_header, form_rows),
        "",
        *verdict,
        *notes,
        *([f"- run incomplete: {pending} setting(s) not measured yet"] if pending else []),
    ]
    write_report(lines, args.output)


if __name__ == "__main__":
    main()
