"""How ``dnlseg::attention`` (``dnlseg.context.attention``) is written in an ONNX graph: four formulations.

    y_i = sum_j softmax_j(q_i . k_j * scale) v_j        q (N, P, Cq), k (N, Pk, Cq), v (N, Pk, C') -> (N, P, C')

``chunked`` (the default; any opset the exporter writes, standard ONNX only)
    A ``Loop`` over blocks of B query rows; each step computes its rows exactly, with the whole row of keys:

        y[:, b:b+B] = softmax(q[:, b:b+B] k^T * scale) v     (N, B, Cq) @ (N, Cq, Pk) -> (N, B, Pk) @ (N, Pk, C')

    and appends them to y. Live at a time: one (N, B, Pk) block of weights, B = ``CHUNK_ROWS``. The rows are not
    approximated: each block's softmax sees all Pk keys.
``mha``
    onnxruntime's contrib operator ``com.microsoft.MultiHeadAttention`` with one head. Its CPU kernel for float32
    without mask, bias or past key/value is MLAS flash attention (tiles of query and key rows sized to the L2
    cache, a running max and sum): O(P) memory and the fastest here, but a graph only onnxruntime can run.
``attention_op``
    The standard ``Attention`` operator of opset 23; onnxruntime's CPU kernel (1.32, measured) builds the
    (N, P, Pk) matrix.
``materialized``
    ``MatMul -> Softmax -> MatMul``, what SDPA's reference decomposition exports: the (N, P, Pk) matrix.

``benchmarks/export.md`` has what each costs in time and memory; ``FORMULATIONS`` is the one table of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
import onnxscript
from onnx.defs import OpSchema
from onnxscript import FLOAT
from onnxscript import opset18 as op

CHUNK_ROWS = 512  # query rows per Loop step of "chunked": (N, 512, Pk) weights live, 64 MiB at Pk = 32768, N = 1
MICROSOFT = "com.microsoft"


@onnxscript.script(default_opset=op)
def chunked_attention(q: FLOAT, k: FLOAT, v: FLOAT, scale: float) -> FLOAT:
    rows = op.Constant(value_ints=[CHUNK_ROWS])
    one = op.Constant(value_ints=[1])
    zero = op.Constant(value_ints=[0])
    # An onnxscript script is ONNX, not Python: onnxscript's opset stubs type the Python calls, which this is not
    # (a Constant's element type, `range` of a tensor); the ignores below are theirs.
    P = op.Shape(q, start=1, end=2)
    steps = op.Div(op.Sub(op.Add(P, rows), one), rows)  # type: ignore[type-var]  # ceil(P / rows)
    q = op.Mul(q, op.CastLike(op.Constant(value_float=scale), q))  # type: ignore[type-var]
    k_t = op.Transpose(k, perm=[0, 2, 1])  # (N, Cq, Pk)
    y = op.Slice(v, zero, zero, one)  # type: ignore[type-var]  # (N, 0, C'): the rows are appended step by step
    for step in range(op.Squeeze(steps)):  # type: ignore[type-var, call-overload]
        start = op.Mul(op.Reshape(step, one), rows)  # type: ignore[arg-type]
        q_rows = op.Slice(q, start, op.Add(start, rows), one)  # (N, B, Cq); the last block may be shorter
        w = op.Softmax(op.MatMul(q_rows, k_t), axis=-1)  # (N, B, Cq) @ (N, Cq, Pk) -> (N, B, Pk)
        y = op.Concat(y, op.MatMul(w, v), axis=1)  # (N, B, Pk) @ (N, Pk, C') -> (N, B, C')
    return y


def microsoft_opset() -> onnxscript.values.Opset:
    """The ``com.microsoft`` opset, with the schema of ``MultiHeadAttention`` (the part used here) registered in
    onnx's registry, which holds none of onnxruntime's contrib operators."""
    if not onnx.defs.has("MultiHeadAttention", MICROSOFT):
        tensor = ("T", ["tensor(float)"], "float32 tensors")
        onnx.defs.register_schema(
            OpSchema(
                "MultiHeadAttention",
                MICROSOFT,
                1,
                doc="onnxruntime contrib operator: multi-head attention of (N, P, heads x C) tensors",
                inputs=[OpSchema.FormalParameter(name, "T") for name in ("query", "key", "value")],
                outputs=[OpSchema.FormalParameter("output", "T")],
                type_constraints=[tensor],
                attributes=[
                    OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "number of heads", required=True),
                    OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "logit scale (0: 1/sqrt(C))"),
                ],
            )
        )
    return onnxscript.values.Opset(MICROSOFT, 1)


def mha_attention(q, k, v, scale: float):
    """onnxruntime's ``MultiHeadAttention``, one head: (N, P, Cq), (N, Pk, Cq), (N, Pk, C') -> (N, P, C')."""
    return microsoft_opset().MultiHeadAttention(q, k, v, num_heads=1, scale=scale)


def onnx_attention_op(q, k, v, scale: float):
    """ONNX ``Attention`` (opset 23), 3-D inputs with one query and one key/value head."""
    from onnxscript import opset23

    y, _, _, _ = opset23.Attention(q, k, v, q_num_heads=1, kv_num_heads=1, scale=scale)  # Y, present k/v, QK
    return y


def materialized_attention(q, k, v, scale: float):
    """softmax(q k^T * scale) v with the (N, P, Pk) matrix."""
    # onnxscript makes the Python float a constant; its stub takes tensors only
    logits = op.MatMul(op.Mul(q, op.CastLike(scale, q)), op.Transpose(k, perm=[0, 2, 1]))  # type: ignore[type-var]
    return op.MatMul(op.Softmax(logits, axis=-1), v)  # (N, P, Pk) @ (N, Pk, C') -> (N, P, C')


@dataclass(frozen=True)
class Formulation:
    """One way of writing the attention in ONNX.

    Attributes:
        translate: the onnxscript function the exporter calls for ``dnlseg::attention``.
        min_opset: the oldest default-domain opset it can be written in.
        memory: "O(P)" or "O(P Pk)" (the (N, P, Pk) matrix), as onnxruntime's CPU kernels run it.
        graph: how it appears in the exported graph.
        onnxruntime_only: it uses an onnxruntime contrib operator.
    """

    translate: Callable[..., Any]
    min_opset: int
    memory: str
    graph: str
    onnxruntime_only: bool = False


MIN_OPSET = 18  # the oldest opset torch's ONNX exporter writes (its function library's own)
FORMULATIONS = {
    "chunked": Formulation(
        chunked_attention, MIN_OPSET, "O(P)", f"Loop over blocks of {CHUNK_ROWS} query rows: MatMul-Softmax-MatMul"
    ),
    "mha": Formulation(mha_attention, MIN_OPSET, "O(P)", "com.microsoft.MultiHeadAttention", onnxruntime_only=True),
    "attention_op": Formulation(onnx_attention_op, 23, "O(P Pk)", "Attention (opset 23)"),
    "materialized": Formulation(materialized_attention, MIN_OPSET, "O(P Pk)", "MatMul-Softmax-MatMul"),
}
