"""SegmentationNetwork: smp encoder + decode head (+ aux head), for the variants and the heads of their own."""

import pytest
import torch

from dnlseg.context import VARIANTS, capture_attention, find_context_blocks
from dnlseg.models import SegmentationNetwork
from dnlseg.models.encoder import EncoderOptions
from dnlseg.models.heads import ContextHead, DAHead
from tests.helpers import TINY_HEADS, context_of

NAMES = list(VARIANTS)  # every variant of the table, the baseline included


def tiny(context=None, encoder=EncoderOptions(name="resnet18"), **kwargs):
    torch.manual_seed(0)
    defaults = dict(num_classes=5, encoder=encoder, head_channels=16, aux_channels=8, context=context)
    return SegmentationNetwork(**{**defaults, **kwargs})


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_network_returns_logits_at_input_size(name, output_stride):
    net = tiny(context_of(name), EncoderOptions(name="resnet18", output_stride=output_stride)).train()
    out = net(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == (2, 5, 64, 96)
    assert out.aux_logits.shape == (2, 5, 64, 96)
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("output_stride, grid", [(8, (8, 12)), (16, (4, 6)), (32, (2, 3))])
def test_context_block_runs_at_the_output_stride(output_stride, grid):
    net = tiny(context_of("dnl"), EncoderOptions(name="resnet18", output_stride=output_stride))
    with capture_attention(net) as captured:
        net.eval()(torch.randn(1, 3, 64, 96))
    assert captured["decode_head.context"][0].query_size == grid  # (64 / stride, 96 / stride)
    assert list(find_context_blocks(net)) == ["decode_head.context"]
    assert find_context_blocks(tiny(None)) == {}


def test_aux_head_can_be_turned_off_and_is_not_run_in_eval():
    net = tiny(context_of("nl"), aux_channels=0)
    assert net.aux_head is None and net.train()(torch.randn(1, 3, 32, 32)).aux_logits is None
    assert tiny(context_of("nl")).eval()(torch.randn(1, 3, 32, 32)).aux_logits is None


@pytest.mark.parametrize("size", [(65, 97), (33, 50)])
def test_input_not_divisible_by_the_stride_is_handled(size):
    out = tiny(context_of("dnl")).eval()(torch.randn(1, 3, *size))
    assert out.logits.shape == (1, 5, *size)


def test_baseline_head_differs_from_dnl_head_only_by_the_block():
    base = {n for n, _ in tiny(None).named_parameters()}
    dnl = {n for n, _ in tiny(context_of("dnl")).named_parameters()}
    assert base < dnl
    assert {n.split(".")[2] for n in dnl - base} == {"query", "key", "value", "unary", "out", "out_norm"}


def test_bad_output_stride_and_encoder_name_raise():
    with pytest.raises(ValueError, match=r"model.network.encoder.output_stride=4 must be one of \(8, 16, 32\)"):
        tiny(encoder=EncoderOptions(name="resnet18", output_stride=4))
    with pytest.raises(ValueError, match="model.network.encoder.name='resnet7' is not an smp encoder"):
        tiny(encoder=EncoderOptions(name="resnet7"))


@pytest.mark.parametrize("depth", [3, 4])
def test_shallow_resnet_encoder_feeds_both_heads_and_leaves_no_unused_parameter(depth):
    net = tiny(context_of("dnl"), EncoderOptions(name="resnet18", depth=depth)).train()
    assert not hasattr(net.encoder, "layer4") and hasattr(net.encoder, f"layer{depth - 1}")
    out = net(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == out.aux_logits.shape == (2, 5, 64, 64)
    (out.logits.square().mean() + out.aux_logits.square().mean()).backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []


def test_encoder_depth_is_refused_where_it_is_not_supported():
    with pytest.raises(ValueError, match="model.network.encoder.depth=2 must be 3, 4 or 5"):
        tiny(encoder=EncoderOptions(name="resnet18", depth=2))
    with pytest.raises(ValueError, match="model.network.encoder.depth=3 is supported for ResNet-family"):
        tiny(encoder=EncoderOptions(name="mobilenet_v2", depth=3))


HEADS = {name: head["decode_head"] for name, head in TINY_HEADS.items() if "decode_head" in head}


@pytest.mark.parametrize("name", list(HEADS))
def test_a_decode_head_of_its_own_trains_every_parameter_and_predicts_at_input_size(name):
    net = tiny(None, decode_head=HEADS[name]).train()
    assert not isinstance(net.decode_head, ContextHead)
    out = net(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == out.aux_logits.shape == (2, 5, 64, 96)
    assert all(side.shape == (2, 5, 64, 96) for side in out.side_logits.values())
    loss = sum(t.square().mean() for t in (out.logits, out.aux_logits, *out.side_logits.values()))
    loss.backward()
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}  # EMA's W_in, frozen as in mmseg
    assert [n for n, p in net.named_parameters() if p.grad is None and n not in frozen] == []
    evaluated = net.eval()(torch.randn(1, 3, 33, 50))
    assert evaluated.logits.shape == (1, 5, 33, 50) and evaluated.aux_logits is None and evaluated.side_logits == {}


def test_only_danet_has_side_classifiers_and_only_in_training():
    net = tiny(None, decode_head=HEADS["danet"])
    assert net.side_loss_weights == {"pam": 1.0, "cam": 1.0}
    assert set(net.train()(torch.randn(1, 3, 32, 32)).side_logits) == {"pam", "cam"}
    assert tiny(None, decode_head=HEADS["isanet"]).side_loss_weights == {}


def test_the_ocr_head_refines_the_aux_heads_logits_also_in_evaluation():
    net = tiny(None, decode_head=HEADS["ocrnet"]).eval()
    seen = []
    net.aux_head.register_forward_hook(lambda module, args, out: seen.append(out))
    with capture_attention(net) as captured:
        net(torch.randn(1, 3, 32, 32))
    assert len(seen) == 1 and "decode_head.attention" in captured  # the aux head ran, its logits fed OCR
    with pytest.raises(ValueError, match="OCRHead refines the aux head's logits: keep model.network.aux_channels"):
        tiny(None, decode_head=HEADS["ocrnet"], aux_channels=0)


def test_a_context_block_beside_a_decode_head_of_its_own_is_refused():
    with pytest.raises(ValueError, match="model.network.context is the block of the context head.*set context: null"):
        tiny(context_of("dnl"), decode_head=HEADS["danet"])


def test_a_head_reading_an_input_the_network_does_not_have_is_refused():
    class Odd(DAHead):
        inputs = ("stage2",)

    with pytest.raises(ValueError, match=r"Odd.inputs \['stage2'\] are not among"):
        tiny(None, decode_head=Odd)
