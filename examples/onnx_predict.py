"""Label PNGs of a folder of images from a model written by ``dnlseg export``, without dnlseg or PyTorch.

    pip install numpy pillow onnxruntime
    python examples/onnx_predict.py model.onnx images/ labels/

Writes ``labels/<name>.png`` for every PNG/JPEG under ``images/`` (subfolders kept: ``images/a/b.jpg`` ->
``labels/a/b.png``): 8-bit single-channel label maps at the image's size, in the dataset's label encoding
(Cityscapes: labelIds), the same files as ``dnlseg predict``'s ``labels/``. Everything besides the images comes
from the model file: the graph takes uint8 RGB images (N, 3, H, W) and normalises them itself, and its
``metadata_props`` hold the label value of each class (``label_values``), the classes, the palette and the input
size of a fixed-size export. A mistake ends the script with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def find_images(folder: Path) -> list[tuple[str, Path]]:
    """(name, path) of every image under ``folder``, hidden files and folders skipped; name = path without suffix."""
    files = [
        path
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not any(p.startswith(".") for p in path.parts)
    ]
    return [(path.relative_to(folder).with_suffix("").as_posix(), path) for path in files]


def read_rgb(path: Path) -> np.ndarray:
    """(3, H, W) uint8 RGB as dnlseg reads images (OpenCV): grey and RGBA converted, EXIF rotation applied."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB")).transpose(2, 0, 1)


def check_size(image: np.ndarray, fixed: dict, path: Path, model: Path) -> None:
    """A fixed-size model (``dnlseg export --input_size``) takes images of exactly that size."""
    height, width = image.shape[1:]
    want = fixed.get("height"), fixed.get("width")
    if want != (None, None) and (height, width) != want:
        raise SystemExit(
            f"onnx_predict: {path} is {height}x{width} (HxW) but {model} was exported for {want[0]}x{want[1]} images "
            "(dnlseg export --input_size): resize the images to that size, or export again without --input_size"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the .onnx file written by dnlseg export")
    parser.add_argument("images", type=Path, help="a folder of PNG/JPEG images (subfolders read)")
    parser.add_argument("output", type=Path, help="the folder for the label PNGs")
    args = parser.parse_args(argv)
    if not args.images.is_dir():
        raise SystemExit(f"onnx_predict: {args.images} is not a folder of images")
    try:
        session = onnxruntime.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types for a missing or foreign file
        raise SystemExit(f"onnx_predict: cannot load {args.model} with onnxruntime: {error}") from error
    metadata = session.get_modelmeta().custom_metadata_map
    if "label_values" not in metadata:
        raise SystemExit(f"onnx_predict: {args.model} has no label_values metadata: export it with dnlseg export")
    values = np.zeros(256, dtype=np.uint8)  # class id (argmax) -> label value of the dataset's encoding
    label_values = json.loads(metadata["label_values"])
    values[: len(label_values)] = label_values
    fixed, output = json.loads(metadata["input"]), json.loads(metadata["output"])
    images = find_images(args.images)
    if not images:
        raise SystemExit(f"onnx_predict: no images ({'/'.join(IMAGE_SUFFIXES)}) under {args.images}")
    for name, path in images:
        image = read_rgb(path)
        check_size(image, fixed, path, args.model)
        (logits,) = session.run([output["name"]], {fixed["name"]: image[None]})  # (1, K, H, W)
        labels = values[logits[0].argmax(axis=0)]  # (H, W)
        target = args.output / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(target)
    print(f"wrote {len(images)} label PNGs to {args.output}")


if __name__ == "__main__":
    sys.exit(main())
