"""An ``ImageSegmenter`` as an ONNX file with its metadata, and the check of that file against onnxruntime.

    model = export_onnx(segmenter, metadata, opset=20, attention="chunked")   # onnx.ModelProto
    onnx.save_model(model, path)
    check_onnx(path, segmenter, (256, 512))                                    # logits vs PyTorch eager

The graph is traced by ``torch.export`` (torch's ONNX exporter, ``dynamo=True``) with dynamic batch, height and
width, or a fixed height and width (``input_size``); its attention is written as the formulation chosen
(``dnlseg.deploy.onnx_attention``). ``dnlseg.deploy.metadata`` lists the ``metadata_props``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor

from dnlseg.deploy.metadata import INPUT_NAME, OUTPUT_NAME
from dnlseg.deploy.onnx_attention import FORMULATIONS, MIN_OPSET
from dnlseg.deploy.segmenter import ImageSegmenter
from dnlseg.errors import ExportError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20  # torch's exporter's default; the Attention operator ("attention_op") needs 23
EXAMPLE_SIZE = (96, 128)  # traced example of a dynamic export: H != W, both > 1 at every stride (no specialisation)
EXAMPLE_BATCH = 2  # > 1, or torch.export fixes the batch axis at 1


def check_options(attention: str, opset: int) -> None:
    """The formulation exists and ``opset`` can express it; ``ExportError`` naming the option otherwise."""
    if attention not in FORMULATIONS:
        raise ExportError(f"--attention {attention}: expected one of {', '.join(FORMULATIONS)}")
    newest = onnx.defs.onnx_opset_version()
    needed = FORMULATIONS[attention].min_opset
    if opset < needed:
        what = "torch's ONNX exporter writes no opset older than" if needed == MIN_OPSET else "it needs"
        raise ExportError(
            f"--opset {opset} is too old for --attention {attention} ({FORMULATIONS[attention].graph}): "
            f"{what} {needed}; use --opset {max(needed, DEFAULT_OPSET)} or another --attention"
        )
    if opset > newest:
        raise ExportError(f"--opset {opset} is newer than the installed onnx {onnx.__version__} knows ({newest})")


def dynamic_shapes(input_size: tuple[int, int] | None) -> tuple[dict[int, torch.export.Dim], ...]:
    """Batch always dynamic; height and width too unless ``input_size`` fixes them."""
    axes = {0: torch.export.Dim("batch")}
    if input_size is None:
        axes |= {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    return (axes,)


def export_onnx(
    segmenter: ImageSegmenter,
    metadata: Mapping[str, str],
    *,
    input_size: tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    attention: str = "chunked",
) -> onnx.ModelProto:
    """The ONNX model of ``segmenter`` (eval mode) with ``metadata`` as its ``metadata_props``.

    Args:
        segmenter: uint8 images (N, 3, H, W) -> logits (N, K, H, W).
        metadata: ``dnlseg.deploy.metadata.build_metadata``'s mapping.
        input_size: (H, W) of a fixed-size graph; None: dynamic height and width.
        opset: the default-domain opset of the graph.
        attention: a key of ``dnlseg.deploy.onnx_attention.FORMULATIONS``.
    """
    check_options(attention, opset)
    height, width = input_size if input_size is not None else EXAMPLE_SIZE
    example = torch.randint(0, 256, (EXAMPLE_BATCH, 3, height, width), dtype=torch.uint8)
    translation: dict[Callable[..., Any], Callable[..., Any]] = {
        torch.ops.dnlseg.attention.default: FORMULATIONS[attention].translate
    }
    segmenter = segmenter.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the exporter's advice is for exporter developers
            program = torch.onnx.export(
                segmenter,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=dynamic_shapes(input_size),
                custom_translation_table=translation,
                verbose=False,
                optimize=True,
            )
    except Exception as error:  # torch.export and the ONNX translation raise many kinds
        raise ExportError(f"torch's ONNX exporter failed on this network: {first_line(error)}") from error
    if program is None:  # dynamo=True returns the program
        raise ExportError("torch's ONNX exporter returned no program")
    model = program.model_proto
    onnx.helper.set_model_props(model, dict(metadata))
    model.doc_string = "dnlseg segmentation network: uint8 RGB image (N, 3, H, W) -> logits (N, K, H, W)"
    return model


def first_line(error: BaseException) -> str:
    """The innermost cause's message, first line only (the exporter wraps errors in pages of advice)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def read_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading its weights)."""
    model = onnx.load_model(path, load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def relative_error(got: np.ndarray | Tensor, want: np.ndarray | Tensor) -> float:
    """max over pixels of max_k |got - want| / max_k |want|: logits (N, K, H, W) compared pixel by pixel."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = np.maximum(np.abs(want).max(axis=1), np.finfo(np.float32).tiny)
    return float((np.abs(got - want).max(axis=1) / scale).max())


def onnxruntime_session(path: Path | bytes, threads: int | None = None):
    """An onnxruntime CPU session of the model at ``path`` (or serialised bytes)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads = threads
    source = str(path) if isinstance(path, Path) else path
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_onnx(path: Path, segmenter: ImageSegmenter, size: tuple[int, int], tolerance: float = 1e-4) -> float:
    """onnxruntime's logits of a random uint8 image of ``size`` against PyTorch eager's; returns the relative error
    (``relative_error``) and raises ``ExportError`` above ``tolerance``."""
    image = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = segmenter.eval()(image).numpy()
    got = onnxruntime_session(path).run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})[0]
    error = relative_error(got, want)
    if not error <= tolerance:
        raise ExportError(
            f"{path}: onnxruntime's logits differ from PyTorch's by {error:.2e} (relative, max over pixels) on a "
            f"{size[0]}x{size[1]} image, more than {tolerance:g}: the export is wrong; report it with the config"
        )
    return error
