"""``dnlseg.deploy.onnx_attention``: each formulation of ``dnlseg::attention`` computes softmax attention in
onnxruntime, for any number of positions, with its scale, and the chunked one in O(P) memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from dnlseg.context import fused_attention
from dnlseg.deploy.onnx_attention import CHUNK_ROWS, FORMULATIONS
from dnlseg.deploy.onnx_model import onnxruntime_session

pytestmark = pytest.mark.slow  # an export each

SCALE = 0.3


class Attend(torch.nn.Module):
    def forward(self, q, k, v):
        return fused_attention(q, k, v, scale=SCALE)


def export_attention(formulation: str) -> onnx.ModelProto:
    batch, positions, keys = torch.export.Dim("N"), torch.export.Dim("P"), torch.export.Dim("Pk")
    q, k, v = torch.randn(2, 40, 8), torch.randn(2, 30, 8), torch.randn(2, 30, 4)
    program = torch.onnx.export(
        Attend(),
        (q, k, v),
        dynamo=True,
        input_names=["q", "k", "v"],
        dynamic_shapes=({0: batch, 1: positions}, {0: batch, 1: keys}, {0: batch, 1: keys}),
        opset_version=max(20, FORMULATIONS[formulation].min_opset),
        custom_translation_table={torch.ops.dnlseg.attention.default: FORMULATIONS[formulation].translate},
        verbose=False,
    )
    return program.model_proto


@pytest.mark.parametrize("formulation", list(FORMULATIONS))
def test_each_formulation_is_softmax_attention_with_its_scale_for_any_number_of_positions(formulation):
    session = onnxruntime_session(export_attention(formulation).SerializeToString())
    rng = np.random.default_rng(0)
    for positions, keys in ((7, 5), (CHUNK_ROWS, 33), (2 * CHUNK_ROWS + 3, 600)):  # 1, 1 and 3 (partial) blocks
        q = rng.standard_normal((1, positions, 8), dtype=np.float32)
        k = rng.standard_normal((1, keys, 8), dtype=np.float32)
        v = rng.standard_normal((1, keys, 4), dtype=np.float32)
        logits = q @ k.transpose(0, 2, 1) * SCALE  # (1, P, Pk)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        want = weights / weights.sum(-1, keepdims=True) @ v  # (1, P, Pk) @ (1, Pk, 4)
        (got,) = session.run(None, {"q": q, "k": k, "v": v})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"P={positions}")


PEAK_GROWTH = """
import sys, numpy as np, onnxruntime
from pathlib import Path
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
P = int(sys.argv[2])
q, k, v = (np.random.default_rng(0).standard_normal((1, P, 8), dtype=np.float32) for _ in range(3))
lines = lambda: Path("/proc/self/status").read_text().splitlines()
status = lambda key: int(next(line for line in lines() if line.startswith(key)).split()[1])
Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
before = status("VmRSS")
session.run(None, {"q": q, "k": k, "v": v[..., :4]})
print((status("VmHWM") - before) * 1024)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads the resident set from Linux's /proc")
def test_the_chunked_attention_grows_onnxruntimes_memory_by_far_less_than_the_attention_matrix(tmp_path):
    """P = 8192: the (P, P) float32 matrix is 268 MB; the chunked Loop holds one (512, P) block, 17 MB. The growth of
    the resident set during the first run (the arena included); the materialised formulation, run the same way, is
    the control that the measure sees the matrix."""
    positions, matrix = 8192, 8192**2 * 4
    growth = {}
    for formulation in ("chunked", "materialized"):
        path = tmp_path / f"{formulation}.onnx"
        onnx.save(export_attention(formulation), path)
        script = [sys.executable, "-c", textwrap.dedent(PEAK_GROWTH), str(path), str(positions)]
        result = subprocess.run(script, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        growth[formulation] = int(result.stdout.strip().splitlines()[-1])
    assert growth["materialized"] > 0.9 * matrix  # the control: one (P, P) matrix is seen (seen: 286 MB)
    assert growth["chunked"] < matrix / 4, growth  # seen: 37 MB
