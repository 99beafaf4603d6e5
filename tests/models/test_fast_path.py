"""The GPU fast-path options of SegmentationModule (channels-last, bf16/fp16 autocast, torch.compile), checked on CPU:
each gives the outputs of the plain fp32 contiguous network, to rounding."""

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnlseg.context import VARIANTS, find_context_blocks
from dnlseg.models import SegmentationModule
from dnlseg.models.encoder import EncoderOptions
from dnlseg.models.module import RuntimeOptions
from tests.helpers import context_of, tiny_network

NAMES = ("nl", "dnl")  # of dnlseg.context.VARIANTS: the blocks with an attention kernel of their own


def tiny_module(context, **kwargs) -> SegmentationModule:
    """resnet18 at stride 8, 16-channel head; the context block's output norm set to ones so the attention
    reaches the output (at initialisation the block is the identity and would hide any difference)."""
    torch.manual_seed(0)
    module = SegmentationModule(
        num_classes=5, network=tiny_network(context, encoder=EncoderOptions(name="resnet18")), **kwargs
    )
    for block in find_context_blocks(module).values():
        nn.init.ones_(block.out_norm.weight)
    return module


def batch(seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(2, 3, 64, 96, generator=generator),
        "mask": torch.randint(0, 5, (2, 64, 96), generator=generator),
    }


def loss_and_grads(module: SegmentationModule, data: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the same dropout masks in every call
    loss = module.losses(data)["loss"]
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads[k].flatten() for k in sorted(grads)])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous_forward_and_gradients(name):
    plain = tiny_module(context_of(name))
    fast = tiny_module(context_of(name), runtime=RuntimeOptions(channels_last=True))
    fast.load_state_dict(plain.state_dict())
    conv = fast.network.encoder.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()

    data = batch()
    loss, grads = loss_and_grads(plain.train(), data)
    fast_loss, fast_grads = loss_and_grads(fast.train(), data)
    torch.testing.assert_close(fast_loss, loss, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == grads.keys()
    # Summation order differs between the layouts, and a random-init ResNet with batch-2 BatchNorm amplifies
    # rounding towards the stem: the head's weight gradients agree to 1e-3, the whole gradient to 2e-2 (measured
    # with this draw: NL 0.008, DNL 0.016, nearly all of it the stem conv's; 1e-2 held for the draw before the
    # block's bias-free output conv changed which random numbers each layer gets).
    # (Biases of convs before a BatchNorm have a true gradient of 0, so their relative error means nothing.)
    head = [k for k in grads if k.startswith("network.decode_head.") and k.endswith(".weight")]
    for key in head:
        assert relative_error(fast_grads[key], grads[key]) < 1e-3, key
    assert relative_error(flat(fast_grads), flat(grads)) < 2e-2

    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(data["image"]), plain.eval()(data["image"]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_matches_fp32_forward_and_backward(name):
    module = tiny_module(context_of(name)).train()
    data = batch()
    loss, grads = loss_and_grads(module, data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_loss, bf16_grads = loss_and_grads(module, data)
    assert abs(bf16_loss.item() - loss.item()) < 0.02 * loss.item()
    assert bf16_grads.keys() == grads.keys()
    assert all(torch.isfinite(g).all() for g in bf16_grads.values())
    for branch in ("query", "key", "value", "out", "unary"):  # the gradient reaches every branch of the block
        key = f"network.decode_head.context.{branch}.weight"
        assert key not in grads or bf16_grads[key].abs().max() > 0, key
    # bf16 keeps 8 bits of mantissa; through a random-init ResNet with batch-2 BatchNorm, deep gradients differ by
    # tens of percent, the classifier's (one layer from the loss) by a few. The block alone: the next test.
    for key in ("network.decode_head.classifier.weight", "network.aux_head.classifier.weight"):
        assert relative_error(bf16_grads[key], grads[key]) < 0.05, key

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_logits = module.eval()(data["image"])
    with torch.no_grad():
        logits = module(data["image"])
    assert relative_error(bf16_logits, logits) < 0.05


@pytest.fixture
def sdpa_input_dtypes(monkeypatch) -> list[tuple[torch.dtype, ...]]:
    """The dtypes of the q, k, v the blocks pass to ``F.scaled_dot_product_attention``: recorded at the Python
    call, before autocast's own cast of SDPA's inputs (which would hide a promotion from the kernel's view)."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    return seen


@pytest.mark.parametrize(
    ("name", "learn_temperature"),
    [(name, False) for name in NAMES] + [(name, True) for name in NAMES if name != "nl"],  # NL: no tau
)
def test_fused_attention_gets_q_k_v_of_one_low_precision_dtype_under_autocast(
    name, learn_temperature, sdpa_input_dtypes
):
    """Flash and memory-efficient SDPA kernels need q, k and v of one dtype (fp16/bf16 on CUDA): the fp32
    temperature (a buffer or a learned parameter) must not promote the whitened query back to fp32."""
    kwargs = {"learn_temperature": True} if learn_temperature else {}
    block = VARIANTS[name].build(32, **kwargs)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    nn.init.ones_(block.out_norm.weight)
    grad_out = torch.randn(2, 32, 8, 8)
    block(x).backward(grad_out)
    grad, x.grad = x.grad.clone(), None
    sdpa_input_dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.backward(grad_out)
    assert sdpa_input_dtypes == [(torch.bfloat16,) * 3]
    assert relative_error(x.grad, grad) < 0.05


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcc") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compile_matches_eager_and_keeps_state_dict_keys():
    eager = tiny_module(context_of("dnl"))
    compiled = tiny_module(context_of("dnl"), runtime=RuntimeOptions(compile=True))
    assert compiled.network._compiled_call_impl is not None  # nn.Module.compile took effect
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    compiled.load_state_dict(eager.state_dict())  # a checkpoint of the eager model loads as it is
    data = batch()
    with torch.no_grad():
        torch.testing.assert_close(compiled.eval()(data["image"]), eager.eval()(data["image"]), rtol=1e-4, atol=1e-5)


def test_the_synthetic_config_through_the_dnlseg_cli_turns_cudnn_benchmark_off(monkeypatch):
    """The fast path's ``trainer.benchmark: true`` is for non-deterministic runs: the Trainer that ``dnlseg`` builds
    from a deterministic config (synthetic/*) has cuDNN autotuning off and deterministic algorithms on, even when
    the session had autotuning on."""
    from pathlib import Path

    from dnlseg.cli.lightning_cli import run_cli

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    config = Path(__file__).resolve().parents[2] / "configs/synthetic/dnl.yaml"
    try:
        run_cli(["-c", str(config), "--trainer.logger=false", "--trainer.callbacks=[]"], run=False)
        assert torch.backends.cudnn.benchmark is False
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.slow
def test_fast_path_turns_on_from_yaml_and_fits(tmp_path):
    """``trainer.precision: bf16-mixed`` and ``model.runtime.channels_last: true`` as a user sets them, on a synthetic
    fit."""
    from pathlib import Path

    from dnlseg.cli.lightning_cli import run_cli

    config = Path(__file__).resolve().parents[2] / "configs/synthetic/dnl.yaml"
    cli = run_cli(
        [
            "fit",
            "-c",
            str(config),
            "--trainer.precision=bf16-mixed",
            "--model.runtime.channels_last=true",
            "--trainer.max_steps=2",
            "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--model.network.head_channels=16",
            "--model.network.aux_channels=8",
            "--data.init_args.num_train=4",
            "--data.init_args.num_val=1",
            "--data.init_args.image_size=64",
            "--data.init_args.loader.batch_size=2",
        ]
    )
    assert cli.trainer.global_step == 2 and cli.trainer.precision == "bf16-mixed"
    assert cli.model.hparams.runtime == {"channels_last": True, "compile": False}
    assert cli.model.network.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
