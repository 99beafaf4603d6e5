"""Decode heads: the context head around one block (NL, DNL, GC, CC), the aux FCN head, and the heads of the field
with layouts of their own (DANet, ANN, ISA, EMANet, OCR), each mirroring its mmseg 1.2.2 head layer for layer."""

from dnlseg.models.heads.asymmetric_non_local import ANNHead
from dnlseg.models.heads.base import HEAD_INPUTS, DecodeHead, HeadOutput
from dnlseg.models.heads.context_head import ContextHead, FCNHead, conv_bn_relu
from dnlseg.models.heads.dual_attention import DAHead
from dnlseg.models.heads.expectation_maximization import EMAHead
from dnlseg.models.heads.interlaced_sparse import ISAHead
from dnlseg.models.heads.object_context import OCRHead

__all__ = [
    "HEAD_INPUTS",
    "ANNHead",
    "ContextHead",
    "DAHead",
    "DecodeHead",
    "EMAHead",
    "FCNHead",
    "HeadOutput",
    "ISAHead",
    "OCRHead",
    "conv_bn_relu",
]
