"""A trained network as a file that runs without dnlseg: ONNX (``onnx_model``, its attention written by
``onnx_attention``) or TorchScript (``torchscript``), the module that is exported (``segmenter``) and the metadata
inside the file (``metadata``). ``dnlseg export`` (``dnlseg.cli.export``) is the command; ``onnx`` and ``onnxscript``
(the ``export`` extra) are imported only by the ONNX modules."""

from dnlseg.deploy.files import atomic_output
from dnlseg.deploy.metadata import build_metadata
from dnlseg.deploy.segmenter import ImageSegmenter

__all__ = ["ImageSegmenter", "atomic_output", "build_metadata"]
