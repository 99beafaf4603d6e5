"""Encoder weights come from local files only; a hub name fails fast, never downloads."""

import pytest
import torch
from safetensors.torch import save_file

from dnlseg.errors import UserError, WeightFileError
from dnlseg.models.encoder import build_encoder


def test_hub_weight_name_fails_fast_with_an_explanation():
    with pytest.raises(ValueError, match="never downloads"):
        build_encoder("resnet18", output_stride=8, weights="imagenet")


def test_torchvision_style_pth_loads_into_the_encoder(tmp_path):
    torch.manual_seed(3)
    source = build_encoder("resnet18", output_stride=32)
    state = {**source.state_dict(), "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save(state, tmp_path / "resnet18.pth")
    loaded = build_encoder("resnet18", output_stride=8, weights=tmp_path / "resnet18.pth")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)


def test_safetensors_and_nested_checkpoint_load(tmp_path):
    source = build_encoder("resnet18", output_stride=32)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = build_encoder("resnet18", output_stride=8, weights=tmp_path / name)
        torch.testing.assert_close(loaded.conv1.weight, source.conv1.weight, rtol=0, atol=0)


def test_mismatched_weight_file_names_the_problem(tmp_path):
    torch.save(build_encoder("resnet34", output_stride=32).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="does not fit the encoder.*unexpected"):
        build_encoder("resnet18", output_stride=8, weights=tmp_path / "r34.pth")


def test_missing_weight_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at .*nope.pth"):
        build_encoder("resnet18", output_stride=8, weights=tmp_path / "nope.pth")


def test_full_resnet_weights_load_into_a_shallow_encoder(tmp_path):
    torch.manual_seed(4)
    source = build_encoder("resnet18", output_stride=32)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    loaded = build_encoder("resnet18", output_stride=8, weights=tmp_path / "resnet18.pth", depth=3)
    assert not any(k.startswith(("layer3.", "layer4.")) for k in loaded.state_dict())
    torch.testing.assert_close(loaded.layer2[1].conv2.weight, source.layer2[1].conv2.weight, rtol=0, atol=0)


def test_mmseg_imagenet_v1c_file_loads_into_tu_resnet50c_and_gives_mmsegs_features(tmp_path):
    """mmseg's ``resnet50_v1c`` key layout (stem.0 ... stem.7, layer*, fc) into timm's ResNet-C: same features as
    mmseg's ``ResNetV1c`` (deep stem, contracted dilation, output stride 8) with that file."""
    from mmseg_reference import import_mmseg

    backbone = import_mmseg().backbones.ResNetV1c(
        depth=50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True, out_indices=(0, 1, 2, 3)
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in backbone.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5 if "running_var" in name else torch.randn_like(tensor) * 0.05
                )
    state = {**backbone.state_dict(), "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    torch.save(state, tmp_path / "resnet50_v1c-2cccc1ad.pth")
    encoder = build_encoder("tu-resnet50c", output_stride=8, weights=tmp_path / "resnet50_v1c-2cccc1ad.pth").eval()
    images = torch.randn(1, 3, 64, 64)
    backbone.eval()  # mmseg's ResNet.train() returns None
    with torch.no_grad():
        for ours, reference in zip(encoder(images)[2:], backbone(images), strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_timm_state_dict_loads_into_a_tu_encoder(tmp_path):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "timm_resnet18.pth")
    encoder = build_encoder("tu-resnet18", output_stride=8, weights=tmp_path / "timm_resnet18.pth")
    torch.testing.assert_close(encoder.model.layer2[0].conv1.weight, source.layer2[0].conv1.weight, rtol=0, atol=0)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"these are not weights\n", r"is not a file torch.load \(or safetensors\) can read"),
        (b"PK\x03\x04truncated zip", r"the file is damaged, its zip index cannot be read"),
        ([1, 2, 3], r"holds a list, expected a state dict"),
        ({"epoch": 3, "note": "x"}, r"holds a dict without tensors \(epoch, note\), expected a state dict"),
    ],
    ids=["text", "corrupt", "list", "no tensors"],
)
def test_a_file_that_is_no_state_dict_is_a_user_error_naming_it(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightFileError, match=rf"model.network.encoder.weights: .*weights.pth:? {message}") as error:
        build_encoder("resnet18", output_stride=8, weights=path)
    assert isinstance(error.value, UserError)


def test_a_state_dict_of_another_network_names_the_layouts_it_expected(tmp_path):
    torch.save(build_encoder("resnet50", output_stride=32).state_dict(), tmp_path / "torchvision_resnet50.pth")
    with pytest.raises(WeightFileError) as error:
        build_encoder("tu-resnet50c", output_stride=8, weights=tmp_path / "torchvision_resnet50.pth")
    message = str(error.value)
    assert "smp/torchvision: model.conv1.0.weight" in message and "timm: conv1.0.weight" in message
    assert "mmseg ImageNet: stem.0.weight" in message and "conv1.weight" in message  # what the file has


@pytest.mark.parametrize("output_stride, dilations", [(8, (2, 4)), (16, (1, 2)), (32, (1, 1))])
def test_output_stride_sets_the_feature_size_and_the_dilation_of_the_last_stages(output_stride, dilations):
    # The paper's dilated ResNet (docs/science.md section 4): stride 8 = layer3 dilation 2, layer4 dilation 4.
    encoder = build_encoder("resnet18", output_stride=output_stride)
    features = encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in features[-2:]] == [
        (64 // min(16, output_stride), 96 // min(16, output_stride)),
        (64 // output_stride, 96 // output_stride),
    ]
    assert (encoder.layer3[1].conv1.dilation[0], encoder.layer4[1].conv1.dilation[0]) == dilations


def test_ddp_and_encoder_prefixes_are_stripped_and_classifier_heads_dropped(tmp_path):
    torch.manual_seed(5)
    source = build_encoder("resnet18", output_stride=32)
    state = {f"module.encoder.{k}": v for k, v in source.state_dict().items()}
    state.update({"classifier.weight": torch.randn(3), "head.bias": torch.randn(3), "fc.weight": torch.randn(2)})
    torch.save({"model": state}, tmp_path / "wrapped.pth")  # timm/DeiT-style {"model": ...} wrapper
    loaded = build_encoder("resnet18", output_stride=8, weights=tmp_path / "wrapped.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_file_that_is_not_a_state_dict_names_what_it_holds(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list.pth holds a list, expected a state dict"):
        build_encoder("resnet18", output_stride=8, weights=tmp_path / "list.pth")


def test_a_missing_or_misshapen_tensor_is_named(tmp_path):
    state = build_encoder("resnet18", output_stride=32).state_dict()
    del state["layer1.0.conv1.weight"]
    state["conv1.weight"] = torch.zeros(1, 3, 7, 7)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as error:
        build_encoder("resnet18", output_stride=8, weights=tmp_path / "bad.pth")
    message = str(error.value)
    assert "missing ['layer1.0.conv1.weight']" in message and "unexpected []" in message
    assert "conv1.weight: file (1, 3, 7, 7) vs encoder (64, 3, 7, 7)" in message
