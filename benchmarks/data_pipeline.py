"""Throughput of the data pipeline per DataLoader worker at Cityscapes size (decode, the recipe's augmentation,
whole items), and the memory of the evaluation metric on a full-resolution label map.

    make bench-data                                   # 8 synthetic 1024x2048 images, 3 passes -> data_pipeline.md
    .venv/bin/python benchmarks/data_pipeline.py --quick   # 3 images, 1 pass

One process with 1 torch and 1 OpenCV thread, as in a DataLoader worker (workers are independent processes: W
workers deliver at most W times this, cores permitting), on images written in the exact Cityscapes layout.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
from _measure import MiB, benchmark_parser, markdown_table, parse, rss_above, time_interleaved, write_report

from dnlseg.data import CityscapesDataModule, LoaderOptions, SetupChecks, TrainAugmentation, write_cityscapes_layout
from dnlseg.data.cityscapes import LABEL_ID_TABLE, TRAIN_ID_TABLE, cityscapes_pairs
from dnlseg.data.folder import check_pair, read_image, read_label
from dnlseg.data.transforms import seed_transform, train_transform
from dnlseg.evaluation import SegmentationIoU

SEED = 0
HEIGHT, WIDTH = 1024, 2048
CROPS = {"512x1024": (512, 1024), "769x769": (769, 769)}


def stage_times(root: Path, passes: int) -> dict[str, float]:
    """ms per image of each stage, as ``CityscapesDataModule`` runs it (median of the passes, mean over images)."""
    pairs = cityscapes_pairs(root, "train")
    label_ids = [p.label.with_name(p.label.name.replace("labelTrainIds", "labelIds")) for p in pairs]
    images = [read_image(p.image) for p in pairs]
    labels = [read_label(p.label, TRAIN_ID_TABLE) for p in pairs]
    stages: dict[str, Callable[[int], object]] = {
        "decode image PNG (OpenCV)": lambda i: read_image(pairs[i].image),
        "decode label PNG, labelTrainIds (PIL + lookup)": lambda i: read_label(pairs[i].label, TRAIN_ID_TABLE),
        "decode label PNG, labelIds -> train ids (PIL + lookup)": lambda i: read_label(label_ids[i], LABEL_ID_TABLE),
    }
    for crop_name, crop in CROPS.items():
        augmentation = TrainAugmentation(crop_size=crop, scale_base=(2048, 1024))
        transform = train_transform(augmentation)
        seed_transform(transform, SEED)
        loader, checks = LoaderOptions(num_workers=0), SetupChecks(label_values=False)
        dm = CityscapesDataModule(str(root), augmentation=augmentation, loader=loader, checks=checks, seed=SEED)
        dm.setup("fit")
        seed_transform(dm.datasets["train"].transform, SEED)
        stages[f"train augmentation, {crop_name} crop"] = lambda i, t=transform: t(image=images[i], mask=labels[i])
        stages[f"train item, {crop_name} crop"] = lambda i, d=dm.datasets["train"]: d[i]
    dm.setup("validate")
    val = dm.datasets["val"]
    stages["evaluation item (decode + normalisation, full size)"] = lambda i: val[i % len(val)]
    stages["setup check per sample (image header + label decode and values)"] = lambda i: check_pair(pairs[i], True)
    times = {}
    for name, stage in stages.items():
        calls = {i: lambda i=i, stage=stage: stage(i) for i in range(len(pairs))}
        times[name] = 1000 * sum(t.wall for t in time_interleaved(calls, passes, torch.device("cpu")).values())
        times[name] /= len(pairs)
    return times


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
        peak = rss_above(lambda: metric.update(preds, target))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    pixels = HEIGHT * WIDTH
    rows.append(
        (
            "one `update` on a 1024x2048 map, deterministic mode: peak resident memory above baseline",
            f"{peak / MiB:.0f} MiB (inputs are 2 x {pixels * 8 / MiB:.0f} MiB int64)",
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
    rows.append(("for scale: the fp32 logits of one 1024x2048 image (19 classes)", f"{logits / MiB:.0f} MiB"))
    return rows


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = benchmark_parser(__doc__, Path(__file__).with_suffix(".md"), device=False)
    parser.add_argument("--images", type=int, default=8, help="synthetic 1024x2048 train images")
    args = parse(parser, argv)
    if args.quick or args.tiny:
        args.images, args.repeats = 3 if args.quick else 1, 1
    passes = args.repeats or 3
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # as in a DataLoader worker (init_worker does the same for OpenCV)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        size = (64, 128) if args.tiny else (HEIGHT, WIDTH)
        root = write_cityscapes_layout(tmp, args.images, 2, size, seed=SEED)
        png_mb = statistics.mean(p.stat().st_size for p in Path(tmp).glob("leftImg8bit/train/*/*.png")) / 1e6
        times = stage_times(root, passes)
    items = {f"train item, {crop} crop (decode + augmentation)": f"train item, {crop} crop" for crop in CROPS}
    items["evaluation item (decode + normalisation)"] = "evaluation item (decode + normalisation, full size)"
    metrics = metric_rows("cpu")
    lines = args.run.header("Data pipeline: throughput per worker, and the metric's memory", seed=SEED)
    lines += [
        f"- {args.images} synthetic {size[0]}x{size[1]} train images in the Cityscapes layout, median of {passes} "
        f"passes; mean image PNG {png_mb:.1f} MB (real Cityscapes PNGs: ~2-2.5 MB); 1 torch and 1 OpenCV thread",
        "",
        *markdown_table(["images/s per worker", "value"], [[k, f"{1000 / times[v]:.1f}"] for k, v in items.items()]),
        "",
        *markdown_table(["stage", "ms per image"], [[name, f"{ms:.1f}"] for name, ms in times.items()]),
        "",
        *markdown_table(["metric memory, full-resolution validation", "value"], metrics),
    ]
    write_report(lines, args.output)
    return {name: 1000 / times[stage] for name, stage in items.items()}


if __name__ == "__main__":
    main()
