"""Data pipeline throughput per DataLoader worker at Cityscapes size, and the memory of the evaluation metric.

Run from the repository root:

    make bench                                       # runs this after benchmarks/context_blocks.py
    make bench DATA_BENCH_ARGS=--quick               # (DATA_BENCH_ARGS: the arguments of this script)
    .venv/bin/python benchmarks/data_pipeline.py     # 8 images, 3 passes
    .venv/bin/python benchmarks/data_pipeline.py --quick   # 3 images, 1 pass (~1 minute)

What it measures, on one process (= one DataLoader worker: workers are independent processes, so a loader
with W workers delivers at most W times this, CPU cores permitting):

1. It writes synthetic 1024x2048 images in the exact Cityscapes layout (``write_cityscapes_layout``: RGB PNG
   ``leftImg8bit``, ``gtFine`` labelIds and labelTrainIds PNGs) to a temporary folder.
2. Per image, wall time of each stage as ``CityscapesDataModule`` runs it: PNG decode of the image (OpenCV),
   decode + train-id lookup of the label (PIL; from labelTrainIds, and from labelIds), the recipe's training
   augmentation (rescale 0.5-2.0, category-balanced crop, flip, photometric distortion, normalisation,
   padding) for the 512x1024 and 769x769 crops, and the whole ``__getitem__`` (decode + augmentation +
   tensors) -> images/s per worker. Also the evaluation item (decode + normalisation at full size) and the
   setup check per sample (image header + full label decode).
3. The metric: the state of ``SegmentationIoU`` (one classes x classes int64 confusion matrix), the resident
   memory high-water mark above the baseline during one ``update`` on a full 1024x2048 label map (with
   ``torch.use_deterministic_algorithms(True)``, where torchmetrics' own update would switch to its fallback),
   and the size of the (pixels x classes^2) tensors that fallback builds.

Seeds are pinned (``SEED``). It prints a markdown report and writes it to ``--output``
(default benchmarks/data_pipeline.md).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch

from dnlseg.data import CityscapesDataModule, TrainAugmentation, write_cityscapes_layout
from dnlseg.data.cityscapes import LABEL_ID_TABLE, TRAIN_ID_TABLE, cityscapes_pairs
from dnlseg.data.folder import check_pair, read_image, read_label
from dnlseg.data.transforms import seed_transform, train_transform
from dnlseg.evaluation import SegmentationIoU

SEED = 0
HEIGHT, WIDTH = 1024, 2048
CROPS = {"512x1024": (512, 1024), "769x769": (769, 769)}


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall-clock seconds of ``fn()``, ``repeats`` times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_above_baseline(fn: Callable[[], object]) -> int:
    """Bytes of resident memory above the level before ``fn()`` at its high-water mark (Linux ``VmHWM``)."""

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current resident set
    before = status("VmRSS:")
    fn()
    return status("VmHWM:") - before


def stage_rows(root: Path, passes: int) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """(stage, ms per image) rows and the images/s of the full train item per crop."""
    pairs = cityscapes_pairs(root, "train")
    label_ids = [p.label.with_name(p.label.name.replace("labelTrainIds", "labelIds")) for p in pairs]
    images = [read_image(p.image) for p in pairs]
    labels = [read_label(p.label, TRAIN_ID_TABLE) for p in pairs]
    n = len(pairs) * passes

    def per_image(fn: Callable[[int], object]) -> float:
        total = sum(sum(timed(lambda i=i: fn(i), passes)) for i in range(len(pairs)))
        return 1000 * total / n

    rows = [
        ("decode image PNG (OpenCV)", per_image(lambda i: read_image(pairs[i].image))),
        (
            "decode label PNG, labelTrainIds (PIL + lookup)",
            per_image(lambda i: read_label(pairs[i].label, TRAIN_ID_TABLE)),
        ),
        (
            "decode label PNG, labelIds -> train ids (PIL + lookup)",
            per_image(lambda i: read_label(label_ids[i], LABEL_ID_TABLE)),
        ),
    ]
    throughput = {}
    for crop_name, crop in CROPS.items():
        aug = TrainAugmentation(crop_size=crop, scale_base=(2048, 1024))
        transform = train_transform(aug)
        seed_transform(transform, SEED)
        rows.append(
            (
                f"train augmentation, {crop_name} crop",
                per_image(lambda i, t=transform: t(image=images[i], mask=labels[i])),
            )
        )
        dm = CityscapesDataModule(str(root), augmentation=aug, num_workers=0, seed=SEED, check_label_values=False)
        dm.setup("fit")
        dataset = dm.datasets["train"]
        seed_transform(dataset.transform, SEED)
        ms = per_image(lambda i, d=dataset: d[i])
        rows.append((f"**train item, {crop_name} crop** (decode + augmentation + tensors)", ms))
        throughput[crop_name] = 1000 / ms
    dm.setup("validate")
    ms = per_image(lambda i: dm.datasets["val"][i % len(dm.datasets["val"])])
    rows.append(("evaluation item (decode + normalisation, full 1024x2048)", ms))
    throughput["evaluation"] = 1000 / ms
    rows.append(
        (
            "setup check per sample (image header + label decode and values)",
            per_image(lambda i: check_pair(pairs[i], True)),
        )
    )
    return rows, throughput


def metric_rows(device: str) -> list[tuple[str, str]]:
    rows = []
    for dataset, classes in (("Cityscapes", 19), ("ADE20K", 150)):
        metric = SegmentationIoU(classes).to(device)
        nbytes = metric.confmat.numel() * metric.confmat.element_size()
        rows.append((f"metric state, {dataset} ({classes}x{classes} {metric.confmat.dtype})", f"{nbytes:,} B"))
    generator = torch.Generator().manual_seed(SEED)
    target = torch.randint(0, 19, (1, HEIGHT, WIDTH), generator=generator)
    preds = torch.randint(0, 19, (1, HEIGHT, WIDTH), generator=generator)
    metric = SegmentationIoU(19)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        metric.update(preds, target)  # warm-up
        peak = peak_rss_above_baseline(lambda: metric.update(preds, target))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    pixels = HEIGHT * WIDTH
    rows.append(
        (
            "one `update` on a 1024x2048 map, deterministic mode: peak resident memory above baseline",
            f"{peak / 2**20:.0f} MiB (inputs are 2 x {pixels * 8 / 2**20:.0f} MiB int64)",
        )
    )
    fallback = pixels * 19**2 * (8 + 1)  # int64 arange mesh + bool eq, (pixels, K^2) each
    rows.append(
        (
            "torchmetrics' deterministic fallback for the same update (pixels x 19^2 int64 + bool), not run",
            f"{fallback / 2**30:.1f} GiB",
        )
    )
    logits = 19 * pixels * 4
    rows.append(("for scale: the fp32 logits of one 1024x2048 image (19 classes)", f"{logits / 2**20:.0f} MiB"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8, help="synthetic 1024x2048 train images (default 8)")
    parser.add_argument("--passes", type=int, default=3, help="timed passes over them (default 3)")
    parser.add_argument("--quick", action="store_true", help="3 images, 1 pass")
    parser.add_argument("--output", type=Path, default=Path(__file__).with_suffix(".md"), help="markdown report")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.passes = 3, 1
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # as in a DataLoader worker (init_worker does the same for OpenCV)
    cv2.setNumThreads(1)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    cpu_start = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cityscapes_layout(tmp, args.images, 2, (HEIGHT, WIDTH), seed=SEED)
        png_mb = statistics.mean(p.stat().st_size for p in Path(tmp).glob("leftImg8bit/train/*/*.png")) / 1e6
        bench_start, bench_cpu = time.perf_counter(), time.process_time()
        rows, throughput = stage_rows(root, args.passes)
        cpu_share = (time.process_time() - bench_cpu) / (time.perf_counter() - bench_start)
    metrics = metric_rows("cpu")

    lines = [
        "# Data pipeline: Cityscapes-size throughput per worker, and the metric's memory",
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; one process, "
        f"1 torch and 1 OpenCV thread (as in a DataLoader worker); 1-min load average before the run: {load:.2f}",
        f"- {args.images} synthetic {HEIGHT}x{WIDTH} train images in the Cityscapes layout, {args.passes} timed "
        f"passes, seed {SEED}; mean image PNG {png_mb:.1f} MB (real Cityscapes PNGs: ~2-2.5 MB; the synthetic "
        "pixel noise compresses worse, so decoding here is slower than on the real files)",
        f"- the timed part was on the CPU {100 * cpu_share:.0f}% of its wall time (below 100%: other processes "
        "competed for the CPU)",
        f"- run took {time.perf_counter() - start:.0f} s ({time.process_time() - cpu_start:.0f} s CPU)",
        "",
        "## Throughput per worker",
        "",
        "| images/s per worker | value |",
        "|---|---|",
        *[f"| train item, {crop} crop (decode + augmentation) | **{throughput[crop]:.1f}** |" for crop in CROPS],
        f"| evaluation item (decode + normalisation) | {throughput['evaluation']:.1f} |",
        "",
        "A recipe step takes 2 images per GPU: at these rates a loader feeds "
        f"{throughput['512x1024'] / 2:.1f} steps/s per worker; `num_workers: 4` per GPU gives "
        f"~{4 * throughput['512x1024'] / 2:.0f} steps/s where 4 free cores per GPU exist.",
        "",
        "## Stages (ms per image)",
        "",
        "| stage | ms |",
        "|---|---|",
        *[f"| {name} | {ms:.1f} |" for name, ms in rows],
        "",
        "## Metric memory during a full-resolution validation",
        "",
        "| quantity | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in metrics],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
