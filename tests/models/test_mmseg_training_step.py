"""One training step of a recipe equals mmseg's on the same batch: every loss term -- the decode-head loss, DANet's
PAM-only and CAM-only losses, the 0.4-weighted aux loss (OCR: its cascade's FCN stage) -- equals mmseg's
``loss_by_feat`` (its ``CrossEntropyLoss`` averaging over all pixels, ignored ones 0), and every parameter's gradient
equals mmseg's, for a crop with ignored pixels (NL, DNL, DANet, CCNet, OCR).

Both models run in float64: in fp32 the two implementations (fused SDPA against mmseg's softmax matmuls, summed
through a ResNet) differ by up to ~1e-5 relative in a few gradients (measured: NL R101 769x769 conv_out 1.06e-5),
which would hide nothing but leave no margin; in float64 they agree to ~1e-11, so any real difference shows
(measured for DANet, CCNet and OCR: every loss term and every gradient 9.7e-12 relative, all alike: mmseg's
``CrossEntropyLoss`` divides by the pixel count plus float32's eps, 1.2e-7 / 12288)."""

import pytest
import torch
from mmengine.structures import PixelData

from dnlseg.checkpoints.mmseg import mmseg_key_map, mmseg_state_dict_for
from tests.mmseg_helpers import mmseg_model, recipe_model
from tests.recipes import recipe

# Gradients that are 0 in exact arithmetic, so a relative error means nothing for them: a constant added to all
# positions is removed by what follows -- the value bias by the train-mode BatchNorm after the block's output conv,
# the DNL query/key biases by the whitening, the unary bias and NL's key bias by the softmax over positions (PAM's
# and CC's key bias add q_i . b to every logit of query i: the softmax over its keys removes it).
ZERO_BY_CONSTRUCTION = {
    "dnl": (
        "dnl_block.g.conv.bias",
        "dnl_block.theta.conv.bias",
        "dnl_block.phi.conv.bias",
        "dnl_block.conv_mask.bias",
    ),
    "nl": ("nl_block.g.conv.bias", "nl_block.phi.conv.bias"),
    "danet": ("pam.key_project.bias",),
    "ccnet": ("cca.key_conv.bias",),
    "ocrnet": (),
}
# Each loss term of ours (as weighted in the total: the aux loss times model.loss.aux_weight) and mmseg's key for it:
# DANet's three decode-head losses, OCR's cascade (decode_head.0, the FCN stage, is our aux head).
LOSS_TERMS = {
    "danet": {
        "main_loss": "decode.pam_cam.loss_ce",
        "pam_loss": "decode.pam.loss_ce",
        "cam_loss": "decode.cam.loss_ce",
        "aux_loss": "aux.loss_ce",
    },
    "ocrnet": {"main_loss": "decode_1.loss_ce", "aux_loss": "decode_0.loss_ce"},
}
DEFAULT_TERMS = {"main_loss": "decode.loss_ce", "aux_loss": "aux.loss_ce"}


def segmentation_samples(masks: torch.Tensor) -> list:
    from mmseg.structures import SegDataSample

    samples = []
    for mask in masks:
        sample = SegDataSample(gt_sem_seg=PixelData(data=mask[None]))
        sample.set_metainfo({"img_shape": tuple(mask.shape), "pad_shape": tuple(mask.shape)})
        samples.append(sample)
    return samples


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, crop",
    [
        ("cityscapes/dnl_r50_d8_512x1024_80k", (64, 96)),
        ("cityscapes/nl_r101_d8_769x769_80k", (65, 65)),
        ("cityscapes/danet_r50_d8_512x1024_80k", (64, 96)),
        ("cityscapes/ccnet_r50_d8_512x1024_80k", (64, 96)),
        ("cityscapes/ocrnet_r101_d8_512x1024_80k", (64, 96)),
    ],
)
def test_training_step_loss_and_every_gradient_equal_mmsegs(name, crop, cityscapes_root, tmp_path):
    """Every loss term and every parameter's gradient, float64.

    OCR: mmseg's ``CascadeEncoderDecoder`` runs its FCN stage (``decode_head.0``) twice in training, once for that
    stage's loss and once more for the logits it hands the OCR head; dnlseg runs it once and uses the same logits for
    both. With that stage's dropout at 0 (both models; a p = 0 dropout draws no random numbers) the two forwards are
    the same function of the same batch, so losses and gradients are exactly comparable; the OCR head's own dropout
    stays on and draws the same mask in both. (mmseg's second forward also moves that stage's BatchNorm statistics a
    second time: buffers are not compared here.)
    """
    head = name.split("/")[1].split("_")[0]
    reference = mmseg_model(recipe(name)).double().train()
    model = recipe_model(recipe(name), cityscapes_root, tmp_path)
    model.load_state_dict(mmseg_state_dict_for(model, reference.state_dict(), "the reference"))
    model.double().train()
    if head == "ocrnet":
        reference.decode_head[0].dropout.p = 0.0
        model.network.aux_head.dropout.p = 0.0
    torch.manual_seed(0)
    images = torch.randn(2, 3, *crop, dtype=torch.float64)
    masks = torch.randint(0, 19, (2, *crop))
    masks[:, :9] = 255  # ignored rows in both crops, half of the second crop ignored
    masks[1, :, crop[1] // 2 :] = 255

    torch.manual_seed(1)  # the same dropout masks: both draw them in the same order
    mmseg_losses = reference.loss(images, segmentation_samples(masks))
    sum(value for key, value in mmseg_losses.items() if "loss" in key).backward()  # mmseg's parse_losses
    torch.manual_seed(1)
    losses = model.losses({"image": images, "mask": masks})
    losses["loss"].backward()

    terms = LOSS_TERMS.get(head, DEFAULT_TERMS)
    assert {k for k in mmseg_losses if "loss" in k} == set(terms.values())  # every term of mmseg's has its pair
    assert set(losses) == {"loss", *terms}
    for ours, theirs in terms.items():
        weight = model.aux_weight if ours == "aux_loss" else 1.0
        torch.testing.assert_close(weight * losses[ours], mmseg_losses[theirs], rtol=1e-10, atol=0, msg=ours)
    mmseg_total = sum(value for key, value in mmseg_losses.items() if "loss" in key)
    torch.testing.assert_close(losses["loss"], mmseg_total, rtol=1e-10, atol=0)
    ours = dict(model.named_parameters())
    assert len(ours) == len(list(reference.parameters()))
    names = mmseg_key_map(model)
    zero = ZERO_BY_CONSTRUCTION[head]
    scale = max(p.grad.norm() for p in reference.parameters())
    for key, param in reference.named_parameters():
        grad = ours[names[key]].grad
        if zero and key.endswith(zero):
            assert grad.norm() <= 1e-10 * scale and param.grad.norm() <= 1e-10 * scale, key
            continue
        error = ((grad - param.grad).norm() / param.grad.norm()).item()
        assert error <= 1e-5, f"{key}: gradient relative error {error:.2e}"
