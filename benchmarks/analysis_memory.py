"""Peak resident memory and wall time of ``dnlseg analyze`` at whole-image sizes, and whether it computed both
consistency metrics; ``--baseline-src`` runs the same commands against another checkout's sources.

    .venv/bin/python benchmarks/analysis_memory.py                            # -> benchmarks/analysis_memory.md
    git archive 3d2265d src configs | tar -x -C /tmp/before                   # the code before the contract ...
    .venv/bin/python benchmarks/analysis_memory.py --baseline-src /tmp/before/src   # ... measured beside this one

Each source fits its own synthetic checkpoint (one step on 64 px images, the config's model), then analyses one
validation image per size in a fresh process.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from _measure import ROOT, GiB, benchmark_parser, dnlseg, environment, markdown_table, parse, run, write_report

METRICS = ("val/pairwise_category_consistency", "val/unary_boundary_consistency")
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
    metrics = json.loads((output / "metrics.json").read_text())["metrics"]
    result["metrics"] = {name: metrics.get(name) for name in METRICS}
    result["figures"] = len(list(output.glob("*.png")))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"), device=False)
    parser.add_argument("--baseline-src", type=Path, default=None, help="another checkout's src/ to compare with")
    parser.add_argument("--config", default="configs/synthetic/dnl.yaml", help="relative to each checkout")
    args = parse(parser, argv)
    sizes = TINY_SIZES if args.tiny else SIZES
    sources = {"this checkout": ROOT / "src"}
    if args.baseline_src is not None:
        sources = {f"before ({args.baseline_src})": args.baseline_src.resolve(), **sources}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, src in sources.items():
            ckpt = fit_checkpoint(src, args.config, Path(tmp) / label.split()[0])
            for positions, image_size in sizes.items():
                if label != "this checkout" and not image_size.isdigit():
                    results[label, positions] = {"skipped": "not run: no (height, width) synthetic image_size"}
                    continue
                output = Path(tmp) / f"{label.split()[0]}-{positions}"
                results[label, positions] = analyze(src, args.config, ckpt, image_size, output)

    rows = []
    for (label, positions), r in results.items():
        if "skipped" in r or "error" in r:
            rows.append([label, positions, "-", "-", "-", "-", "-", r.get("skipped") or r["error"]])
            continue
        both = all(value is not None for value in r["metrics"].values())
        values = " / ".join("-" if v is None else f"{v:.4f}" for v in r["metrics"].values())
        target = TARGET_BYTES.get(positions)
        verdict = "" if target is None else f"{'PASS' if r['peak_rss'] <= target else 'FAIL'} <= {target / 1e9:g} GB"
        row = [label, positions, f"{r['peak_rss'] / 1e9:.2f}", f"{r['wall']:.0f}", f"{r['cpu']:.0f}"]
        rows.append(row + ["yes" if both else "no", values, f"{r['figures']} figure(s); {verdict}"])
    header = ["sources", "P", "peak RSS GB", "wall s", "CPU s", "both metrics", "pairwise / unary", "note"]
    lines = args.run.header("Memory of `dnlseg analyze` at whole-image sizes")
    lines += [
        f"- `dnlseg analyze -c {args.config}`, one validation image (batch 1), `--num_images 1`; P = key cells at "
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
