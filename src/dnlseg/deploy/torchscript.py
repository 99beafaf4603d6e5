"""An ``ImageSegmenter`` as a TorchScript archive (``torch.jit.trace``), its metadata inside as an extra file.

    module = export_torchscript(segmenter)
    save_torchscript(module, metadata, path)           # torch.jit.save with extra file "dnlseg.json"
    loaded = torch.jit.load(path, _extra_files=(extra := {"dnlseg.json": ""}))
    metadata = json.loads(extra["dnlseg.json"])        # the keys of dnlseg.deploy.metadata

A trace records the operations the example ran with its sizes read at run time, so the module takes any batch,
height and width (tested at several). Its attention is PyTorch's own SDPA kernel (O(P) memory on CPU and CUDA).
``torch.jit.script`` is not used: it cannot compile the timm encoders of the ``tu-`` recipes. torch 2.14 marks
``torch.jit.save``/``load`` deprecated in favour of ``torch.export``; they work, and the warning is not repeated here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from dnlseg.deploy.onnx_model import EXAMPLE_SIZE, relative_error
from dnlseg.deploy.segmenter import ImageSegmenter
from dnlseg.errors import ExportError

EXTRA_FILE = "dnlseg.json"
DEPRECATION = r"`torch\.jit\.(save|load)` is deprecated"  # torch 2.14: TorchScript still works; the README says so


def export_torchscript(segmenter: ImageSegmenter) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``segmenter`` in eval mode on a uint8 example image."""
    example = torch.randint(0, 256, (1, 3, *EXAMPLE_SIZE), dtype=torch.uint8)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values the trace keeps as constants
            return torch.jit.trace(segmenter.eval(), (example,), check_trace=False)
    except Exception as error:
        raise ExportError(f"torch.jit.trace failed on this network: {type(error).__name__}: {error}") from error


def save_torchscript(module: torch.jit.ScriptModule, metadata: Mapping[str, str], path: Path) -> None:
    """``torch.jit.save`` with ``metadata`` as the JSON extra file ``dnlseg.json``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATION, category=FutureWarning)
        torch.jit.save(module, str(path), _extra_files={EXTRA_FILE: json.dumps(dict(metadata))})


def load_torchscript(path: Path, extra_files: dict[str, str] | None = None) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=DEPRECATION, category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)


def read_torchscript_metadata(path: Path) -> dict[str, str]:
    extra = {EXTRA_FILE: ""}
    load_torchscript(path, extra)
    return json.loads(extra[EXTRA_FILE])


def check_torchscript(path: Path, segmenter: ImageSegmenter, size: tuple[int, int], tolerance: float = 1e-4) -> float:
    """The saved module's logits of a random uint8 image of ``size`` against the eager ``segmenter``'s."""
    image = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loaded = load_torchscript(path)
    with torch.no_grad():
        error = relative_error(loaded(image), segmenter.eval()(image))
    if not error <= tolerance:
        raise ExportError(
            f"{path}: the TorchScript module's logits differ from eager PyTorch's by {error:.2e} (relative) on a "
            f"{size[0]}x{size[1]} image, more than {tolerance:g}: the trace is wrong; report it with the config"
        )
    return error
