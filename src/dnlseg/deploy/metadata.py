"""What travels inside an exported model besides the graph: everything ``examples/onnx_predict.py`` needs.

One flat mapping of string keys to string values (ONNX ``metadata_props``; the ``dnlseg.json`` extra file of a
TorchScript archive), JSON-encoded where the value is not text:

    format_version   "1"
    dnlseg_version   the dnlseg version that exported it
    input            {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "height": H or null,
                      "width": W or null, "batch": null}          null: any size (a dynamic axis)
    output           {"name": "logits", "dtype": "float32", "layout": "NCHW", "classes": K, ...}
    normalization    {"mean": [...], "std": [...], "in_graph": true}: applied inside the graph to image / 255
    class_names      ["road", "sidewalk", ...]                      K names, in train-id order
    palette          [[128, 64, 128], ...]                         one RGB triple per class
    label_values     [7, 8, 11, ...]                              the label-PNG value of each train id (argmax)
    label_encoding   how those values are read, e.g. "Cityscapes label ids (labelIds) ..."
    ignore_index     the label value of void pixels in the training labels (255)
    output_stride    8 or 16: the network's feature stride
    align_corners    of the bilinear upsampling of the logits
    attention        {"formulation": "chunked", "graph": ..., "memory": "O(P)"} (ONNX) or the eager kernels
    inference        the config's ``model.inference``; what the graph computes is its whole-image, scale-1 mode
    checkpoint       the checkpoint file the weights came from (its name), or null (untrained)
    config           the whole resolved config (YAML) the network was built from
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

import dnlseg

FORMAT_VERSION = "1"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def label_values(datamodule: Any, num_classes: int) -> list[int]:
    """The label value ``dnlseg predict`` writes for each train id 0..K-1 (the DataModule's ``encode_prediction``)."""
    ids = np.arange(num_classes, dtype=np.int64).reshape(1, num_classes)
    return [int(value) for value in np.asarray(datamodule.encode_prediction(ids)).reshape(-1)]


def label_encoding(datamodule: Any) -> str:
    """The first line of the DataModule's ``encode_prediction`` docstring, with the DataModule's name."""
    doc = (type(datamodule).encode_prediction.__doc__ or "").strip().splitlines()
    return f"{type(datamodule).__name__}.encode_prediction: {doc[0] if doc else 'train ids'}"


def build_metadata(
    *,
    datamodule: Any,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    input_size: tuple[int, int] | None,
    output_stride: int,
    align_corners: bool,
    attention: Mapping[str, str],
    inference: Mapping[str, Any],
    checkpoint: str | None,
    config: str,
) -> dict[str, str]:
    """The metadata of an exported model (module docstring); every value a string."""
    height, width = input_size if input_size is not None else (None, None)
    values = {
        "format_version": FORMAT_VERSION,
        "dnlseg_version": dnlseg.__version__,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NCHW",
            "channels": "RGB",
            "height": height,
            "width": width,
            "batch": None,
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "layout": "NCHW",
            "classes": num_classes,
            "size": "the input's height and width",
        },
        "normalization": {"mean": list(mean), "std": list(std), "scale": 255, "in_graph": True},
        "class_names": list(datamodule.class_names),
        "palette": [list(map(int, rgb)) for rgb in datamodule.palette],
        "label_values": label_values(datamodule, num_classes),
        "label_encoding": label_encoding(datamodule),
        "ignore_index": int(getattr(datamodule, "ignore_index", 255)),
        "output_stride": output_stride,
        "align_corners": align_corners,
        "attention": dict(attention),
        "inference": dict(inference),
        "checkpoint": checkpoint,
        "config": config,
    }
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}
