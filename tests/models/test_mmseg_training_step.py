"""One training step of a recipe equals mmseg's on the same batch: the decode-head loss and the 0.4-weighted aux
loss equal mmseg's ``loss_by_feat`` (its ``CrossEntropyLoss`` averaging over all pixels, ignored ones 0), and every
parameter's gradient equals mmseg's, for a crop with ignored pixels.

Both models run in float64: in fp32 the two implementations (fused SDPA against mmseg's softmax matmuls, summed
through a ResNet) differ by up to ~1e-5 relative in a few gradients (measured: NL R101 769x769 conv_out 1.06e-5),
which would hide nothing but leave no margin; in float64 they agree to ~1e-11, so any real difference shows."""

import pytest
import torch
from mmengine.structures import PixelData

from dnlseg.checkpoints.mmseg import SEGMENTOR_KEYS, mmseg_state_dict_for, rename
from tests.mmseg_helpers import mmseg_model, recipe_model
from tests.recipes import recipe

# Gradients that are 0 in exact arithmetic, so a relative error means nothing for them: a constant added to all
# positions is removed by what follows -- the value bias by the train-mode BatchNorm after the block's output conv,
# the DNL query/key biases by the whitening, the unary bias and NL's key bias by the softmax over positions.
ZERO_BY_CONSTRUCTION = {
    "dnl": (
        "dnl_block.g.conv.bias",
        "dnl_block.theta.conv.bias",
        "dnl_block.phi.conv.bias",
        "dnl_block.conv_mask.bias",
    ),
    "nl": ("nl_block.g.conv.bias", "nl_block.phi.conv.bias"),
}


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
    "name, crop", [("cityscapes/dnl_r50_d8_512x1024_80k", (64, 96)), ("cityscapes/nl_r101_d8_769x769_80k", (65, 65))]
)
def test_training_step_loss_and_every_gradient_equal_mmsegs(name, crop, cityscapes_root, tmp_path):
    reference = mmseg_model(recipe(name)).double().train()
    model = recipe_model(recipe(name), cityscapes_root, tmp_path)
    model.load_state_dict(mmseg_state_dict_for(model, reference.state_dict(), "the reference"))
    model.double().train()
    torch.manual_seed(0)
    images = torch.randn(2, 3, *crop, dtype=torch.float64)
    masks = torch.randint(0, 19, (2, *crop))
    masks[:, :9] = 255  # ignored rows in both crops, half of the second crop ignored
    masks[1, :, crop[1] // 2 :] = 255

    torch.manual_seed(1)  # the same dropout masks: both draw them in the same order
    mmseg_losses = reference.loss(images, segmentation_samples(masks))
    (mmseg_losses["decode.loss_ce"] + mmseg_losses["aux.loss_ce"]).backward()
    torch.manual_seed(1)
    losses = model.losses({"image": images, "mask": masks})
    losses["loss"].backward()

    torch.testing.assert_close(losses["main_loss"], mmseg_losses["decode.loss_ce"], rtol=1e-10, atol=0)
    torch.testing.assert_close(model.aux_weight * losses["aux_loss"], mmseg_losses["aux.loss_ce"], rtol=1e-10, atol=0)
    ours = dict(model.named_parameters())
    assert len(ours) == len(list(reference.parameters()))
    zero = ZERO_BY_CONSTRUCTION["dnl" if "dnl_" in name else "nl"]
    scale = max(p.grad.norm() for p in reference.parameters())
    for key, param in reference.named_parameters():
        grad = ours["network." + rename(key, SEGMENTOR_KEYS)].grad
        if key.endswith(zero):
            assert grad.norm() <= 1e-10 * scale and param.grad.norm() <= 1e-10 * scale, key
            continue
        error = ((grad - param.grad).norm() / param.grad.norm()).item()
        assert error <= 1e-5, f"{key}: gradient relative error {error:.2e}"
