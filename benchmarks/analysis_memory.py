"""Peak resident memory and wall time of ``dnlseg analyze`` at whole-image sizes per head, and whether every
consistency metric was computed or the report says why not; ``--baseline-src`` runs the same commands against
another checkout's sources.

    .venv/bin/python benchmarks/analysis_memory.py                            # -> benchmarks/analysis_memory.md
    git archive 3d2265d src configs | tar -x -C /tmp/before                   # the code before the contract ...
    .venv/bin/python benchmarks/analysis_memory.py --baseline-src /tmp/before/src   # ... measured beside this one
    .venv/bin/python benchmarks/analysis_memory.py --configs configs/synthetic/{danet,ccnet,annnet}.yaml \
        --positions 32768 --output benchmarks/analysis_memory_heads.md      # the heads of the field, whole image

Each source fits its own synthetic checkpoint per config (one step on 64 px images, the config's model), then
analyses one validation image per size in a fresh process.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _measure import ROOT, GiB, benchmark_parser, dnlseg, environment, markdown_table, parse, run, write_report

METRICS = ("val/pairwise_category_consistency", "val/unary_boundary_consistency")
ANALYSES = dict(zip(METRICS, ("category_consistency", "boundary_consistency"), strict=True))  # metric -> analysis
SIZES = {16384: "1024", 32768: "[1024, 2048]"}  # P (key cells at stride 8) -> --data.init_args.image_size
TINY_SIZES = {64: "64", 128: "[64, 128]"}
TARGET_BYTES = {16384: 1.5e9, 32768: 3e9}  # from the project's issue
ONE_IMAGE = [
    "--data.init_args.loader.batch_size=1",
    "--data.init_args.num_val=1",
    "--trainer.enable_progress_bar=false",
]


def fit_checkpoint(src: Path, config: str, folder: Path) -> Path:
    """last.ckpt of a one-step fit of ``config`` by the code in ``src`` (its own model: checkpoints of one
    checkout need not load in another)."""
    fit = ["fit", "-c", config, "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]
    fit += ["--trainer.num_sanity_val_steps=0", "--trainer.enable_model_summary=false"]
    fit += [f"--trainer.logger.init_args.save_dir={folder}", "--data.init_args.image_size=64", *ONE_IMAGE]
    run(dnlseg(*fit, "--data.init_args.num_train=2"), cwd=src.parent, env=environment(src), output="drop")
    (ckpt,) = folder.glob("*/version_*/checkpoints/last.ckpt")
    return ckpt


def analyze(src: Path, config: str, ckpt: Path, image_size: str, output: Path) -> dict:
    analysis = ["analyze", "-c", config, "--ckpt_path", str(ckpt), "--output", str(output), "--limit_batches", "1"]
    analysis += ["--num_images", "1", f"--data.init_args.image_size={image_size}", *ONE_IMAGE]
    child = run(dnlseg(*analysis), cwd=src.parent, env=environment(src), output="capture", check=False)
    result = {"peak_rss": child.peak_rss, "wall": child.wall, "cpu": child.cpu, "returncode": child.returncode}
    if child.returncode:
        result["error"] = child.output.strip().splitlines()[-1] if child.output.strip() else "no output"
        return result
    record = json.loads((output / "metrics.json").read_text())
    result["metrics"] = {name: record["metrics"].get(name) for name in METRICS}
    result["not_computed"] = record.get("not_computed", [])  # [{block, analysis, reason}]; absent before it existed
    result["figures"] = len(list(output.glob("*.png")))
    return result


def accounted(result: dict) -> bool:
    """Whether every consistency metric has a value, or the report says why it has none."""
    reasons = {row["analysis"] for row in result.get("not_computed", [])}
    return all(value is not None or ANALYSES[name] in reasons for name, value in result["metrics"].items())


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"), device=False)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to compare with")
    parser.add_argument(
        "--configs",
        "--config",
        dest="configs",
        nargs="+",
        default=["configs/synthetic/dnl.yaml"],
        help="recipes to analyse (relative to each checkout), one checkpoint each",
    )
    parser.add_argument("--positions", type=int, nargs="+", default=None, help="P of the sizes to run (default: all)")
    args = parse(parser, argv)
    sizes = TINY_SIZES if args.tiny else SIZES
    if args.positions is not None:
        if unknown := sorted(set(args.positions) - set(sizes)):
            parser.error(f"--positions {unknown}: not among {sorted(sizes)}")
        sizes = {p: size for p, size in sizes.items() if p in args.positions}
    sources = {"this checkout": ROOT / "src"}
    if args.baseline_src is not None:
        sources = {f"before ({args.baseline_src})": args.baseline_src.resolve(), **sources}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, src in sources.items():
            for config in args.configs:
                name = Path(config).stem
                ckpt = fit_checkpoint(src, config, Path(tmp) / label.split()[0] / name)
                for positions, image_size in sizes.items():
                    key = (label, positions) if len(args.configs) == 1 else (label, name, positions)
                    if label != "this checkout" and not image_size.isdigit():
                        results[key] = {"skipped": "not run: no (height, width) synthetic image_size"}
                        continue
                    output = Path(tmp) / f"{label.split()[0]}-{name}-{positions}"
                    results[key] = analyze(src, config, ckpt, image_size, output)

    rows = []
    for key, r in results.items():
        label, positions = key[0], key[-1]
        config = [key[1]] if len(key) == 3 else []
        if "skipped" in r or "error" in r:
            rows.append([label, *config, positions, "-", "-", "-", "-", "-", r.get("skipped") or r["error"]])
            continue
        values = " / ".join("-" if v is None else f"{v:.4f}" for v in r["metrics"].values())
        target = TARGET_BYTES.get(positions)
        verdict = "" if target is None else f"{'PASS' if r['peak_rss'] <= target else 'FAIL'} <= {target / 1e9:g} GB"
        row = [label, *config, positions, f"{r['peak_rss'] / 1e9:.2f}", f"{r['wall']:.0f}", f"{r['cpu']:.0f}"]
        why = sorted({f"{item['analysis']} of {item['block']}" for item in r.get("not_computed", [])})
        note = f"{r['figures']} figure(s); {verdict}" + (
            f"; not computed (reason in the report): {', '.join(why)}" if why else ""
        )
        rows.append(row + ["yes" if accounted(r) else "no", values, note])
    columns = ["config"] if len(args.configs) > 1 else []
    header = ["sources", *columns, "P", "peak RSS GB", "wall s", "CPU s", "every metric or its reason"]
    header += ["pairwise / unary", "note"]
    configs = ", ".join(f"`{config}`" for config in args.configs)
    lines = args.run.header("Memory of `dnlseg analyze` at whole-image sizes")
    lines += [
        f"- `dnlseg analyze -c` {configs}, one validation image (batch 1), `--num_images 1`; P = query cells at "
        "stride 8; peak RSS of the child process (`wait4` ru_maxrss), 1 GB = 1e9 B",
        "- the sources before the analysis contract have no (height, width) synthetic image size, and their "
        f"materialised maps at P = 32768 would need ~{3 * 32768**2 * 4 / GiB:.0f} GiB: not run there",
        "",
        *markdown_table(header, rows),
    ]
    write_report(lines, args.output)
    return results


if __name__ == "__main__":
    main()
