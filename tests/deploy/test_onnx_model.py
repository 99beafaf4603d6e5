"""``dnlseg.deploy.onnx_model``: every head exports, and onnxruntime's logits equal PyTorch eager's at two sizes.

The networks are tiny (ResNet-18 up to layer2, a 16-channel head) with their context blocks woken
(``tests.helpers.wake_context_blocks``), so a wrong attention changes the logits. The larger test size has
25 x 33 = 825 key positions: the chunked formulation runs two Loop steps, the second a partial block.
"""

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from dnlseg.context import VARIANTS
from dnlseg.deploy.onnx_attention import CHUNK_ROWS, FORMULATIONS
from dnlseg.deploy.onnx_model import check_options, export_onnx, onnxruntime_session, relative_error
from dnlseg.errors import ExportError
from tests.helpers import TINY_HEADS, tiny_segmenter, uint8_images

pytestmark = pytest.mark.slow  # each export traces the network (seconds)

METADATA = {"input": json.dumps({"name": "image", "height": None, "width": None})}
SIZES = [(2, 3, 64, 96), (1, 3, 200, 264)]  # dynamic batch, height, width; 825 positions > CHUNK_ROWS
TOLERANCE = 1e-4


def onnx_logits(model: onnx.ModelProto, images: torch.Tensor) -> np.ndarray:
    return onnxruntime_session(model.SerializeToString()).run(["logits"], {"image": images.numpy()})[0]


def eager_logits(segmenter, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return segmenter(images).numpy()


def test_the_larger_size_runs_more_than_one_block_of_query_rows():
    assert 25 * 33 > CHUNK_ROWS > 25 * 33 - CHUNK_ROWS  # two Loop steps, the second one partial


@pytest.mark.parametrize("variant", [*VARIANTS, *TINY_HEADS])
def test_onnxruntime_logits_equal_pytorch_at_two_sizes_for_every_head(variant):
    segmenter = tiny_segmenter(variant)
    model = export_onnx(segmenter, METADATA)
    for i, shape in enumerate(SIZES):
        images = uint8_images(*shape, seed=i)
        got, want = onnx_logits(model, images), eager_logits(segmenter, images)
        assert got.shape == want.shape == (shape[0], 5, *shape[2:])
        assert relative_error(got, want) <= TOLERANCE, shape


@pytest.mark.parametrize("formulation", list(FORMULATIONS))
def test_every_attention_formulation_gives_pytorchs_logits(formulation):
    segmenter = tiny_segmenter("dnl")
    model = export_onnx(segmenter, METADATA, attention=formulation, opset=max(20, FORMULATIONS[formulation].min_opset))
    ops = Counter(node.op_type for node in model.graph.node)
    expected = {"chunked": "Loop", "mha": "MultiHeadAttention", "attention_op": "Attention", "materialized": None}
    if expected[formulation]:
        assert ops[expected[formulation]] == 1  # the one pairwise attention of the DNL block, as that operator
    else:
        assert ops["Softmax"] == 2 and ops["Loop"] == 0  # pairwise and unary softmax at the top level
    for i, shape in enumerate(SIZES):
        images = uint8_images(*shape, seed=i)
        assert relative_error(onnx_logits(model, images), eager_logits(segmenter, images)) <= TOLERANCE


def test_the_graph_takes_uint8_images_and_names_its_dynamic_axes():
    model = export_onnx(tiny_segmenter("dnl"), METADATA)
    (image,), (logits,) = model.graph.input, model.graph.output
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert logits.name == "logits" and logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in model.metadata_props} == METADATA


def test_a_fixed_size_export_takes_that_size_only():
    segmenter = tiny_segmenter("dnl")
    model = export_onnx(segmenter, METADATA, input_size=(64, 96))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 64, 96]
    images = uint8_images(2, 3, 64, 96)
    assert relative_error(onnx_logits(model, images), eager_logits(segmenter, images)) <= TOLERANCE
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # onnxruntime refuses another size
        onnx_logits(model, uint8_images(1, 3, 64, 128))


def test_a_failing_trace_is_an_export_error_naming_the_cause(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("outer advice") from ValueError("Unsupported operator aten::foo\nmore text")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(ExportError, match=r"^torch's ONNX exporter failed on this network: ValueError: Unsupported "):
        export_onnx(tiny_segmenter("baseline"), METADATA)


@pytest.mark.parametrize(
    ("attention", "opset", "message"),
    [
        ("attention_op", 22, r"--opset 22 is too old for --attention attention_op \(Attention \(opset 23\)\): it needs "
         r"23; use --opset 23 or another --attention"),
        ("chunked", 17, r"--opset 17 is too old for --attention chunked .*: torch's ONNX exporter writes no opset "
         r"older than 18; use --opset 20"),
        ("flash", 20, r"--attention flash: expected one of chunked, mha, attention_op, materialized"),
        ("chunked", 99, r"--opset 99 is newer than the installed onnx"),
    ],
)  # fmt: skip
def test_an_opset_or_formulation_that_cannot_work_is_refused_in_one_line(attention, opset, message):
    with pytest.raises(ExportError, match=message) as error:
        check_options(attention, opset)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("attention", "opset"), [("attention_op", 23), ("chunked", 18), ("mha", 20)])
def test_an_opset_new_enough_for_the_formulation_passes(attention, opset):
    check_options(attention, opset)


def test_relative_error_is_per_pixel_max_abs_over_classes():
    want = np.array([[[[10.0, 1.0]], [[-20.0, 0.5]]]])  # (1, 2 classes, 1, 2 pixels): max |want| 20 and 1
    got = want + np.array([[[[0.2, 0.0]], [[0.0, 0.05]]]])
    assert relative_error(got, want) == pytest.approx(0.05)  # pixel 2: 0.05 / 1 (pixel 1 only 0.2 / 20)
