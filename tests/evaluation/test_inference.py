"""Whole, sliding-window and multi-scale + flip inference."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnlseg.evaluation import Inference, slide_windows


def pointwise_model(classes=4, seed=0):
    """A 1x1 convolution: its output at a pixel depends on that pixel only, so every mode must agree with it."""
    torch.manual_seed(seed)
    return nn.Conv2d(3, classes, 1).eval()


def test_slide_windows_follow_the_mmseg_grid_and_cover_the_image():
    windows = slide_windows(1024, 2048, (769, 769), (513, 513))
    assert len(windows) == 2 * 4
    assert windows[0] == (0, 769, 0, 769)
    assert windows[-1] == (1024 - 769, 1024, 2048 - 769, 2048)  # the last window is flush with the border
    covered = torch.zeros(1024, 2048)
    for y0, y1, x0, x1 in windows:
        assert (y1 - y0, x1 - x0) == (769, 769)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1


def test_slide_windows_on_an_image_smaller_than_the_crop_is_the_whole_image():
    assert slide_windows(64, 128, (769, 769), (513, 513)) == [(0, 64, 0, 128)]


def test_slide_equals_whole_for_a_pointwise_model():
    model, images = pointwise_model(), torch.randn(2, 3, 40, 70)
    whole = Inference()(model, images)
    slide = Inference(mode="slide", crop_size=(16, 24), stride=(10, 15))(model, images)
    torch.testing.assert_close(slide, whole)


def test_slide_averages_overlapping_windows():
    calls = []

    def model(x):  # logits = the number of the call: overlaps must average the windows' values
        calls.append(x.shape[-2:])
        return torch.full((x.shape[0], 1, *x.shape[-2:]), float(len(calls)))

    out = Inference(mode="slide", crop_size=(4, 6), stride=(4, 4))(model, torch.zeros(1, 3, 4, 10))
    assert calls == [(4, 6), (4, 6)]  # windows x in [0, 6) and [4, 10)
    assert out.shape == (1, 1, 4, 10) and out[0, 0, 0].tolist() == [1, 1, 1, 1, 1.5, 1.5, 2, 2, 2, 2]


def test_output_is_at_the_requested_label_size():
    # A ramp along W, 0 .. 47, run at scale 0.5 and resized to twice the input: bilinear resizing (half-pixel
    # centres, no align_corners) keeps a ramp a ramp. The 24 columns the model sees hold 2 j' + 0.5; output
    # column j reads source column (j + 0.5) / 4 - 0.5 of those, i.e. j / 2 - 0.25, clamped at the borders.
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return x[:, :1]

    images = torch.arange(48.0).expand(1, 3, 32, 48)
    out = Inference(scales=(0.5,))(model, images, size=(64, 96))
    assert seen == [(16, 24)] and out.shape == (1, 1, 64, 96)
    expected = (torch.arange(96.0) / 2 - 0.25).clamp(0.5, 46.5)
    torch.testing.assert_close(out[0, 0], expected.expand(64, 96))


def test_flip_and_scales_average_softmax_over_views():
    model, images = pointwise_model(), torch.randn(1, 3, 16, 16)
    # A pointwise model is flip-equivariant: the flipped view equals the plain one, so the mean is the softmax.
    out = Inference(flip=True)(model, images)
    torch.testing.assert_close(out, model(images).log_softmax(dim=1), atol=1e-5, rtol=1e-5)
    # Two scales: the mean of the two views' probabilities, each resized to the input size.
    two = Inference(scales=(1.0, 0.5))(model, images)
    half = nn.functional.interpolate(
        model(nn.functional.interpolate(images, size=(8, 8), mode="bilinear")), size=(16, 16), mode="bilinear"
    )
    expected = ((model(images).softmax(1) + half.softmax(1)) / 2).log()
    torch.testing.assert_close(two, expected, atol=1e-5, rtol=1e-5)


def test_flip_view_is_flipped_back_along_the_width():
    # Logits: class 0 = the input's first channel (content), class 1 = the column index (position). The flipped
    # view sees the image mirrored left-right; flipped back, its content logit lines up with the image again and
    # its position logit is mirrored: W - 1 - j. The image differs along H and W, so a flip along H, a missing
    # flip back or a flip back along the other axis all give other probabilities.
    def model(x):
        column = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], *x.shape[-2:])
        return torch.stack([x[:, 0], column], dim=1)

    image = torch.randn(1, 3, 5, 8, generator=torch.Generator().manual_seed(0)) * 3
    content, column = image[:, 0], torch.arange(8.0).expand(1, 5, 8)
    plain = torch.stack([content, column], dim=1).softmax(1)
    mirrored = torch.stack([content, 7 - column], dim=1).softmax(1)
    out = Inference(flip=True)(model, image)
    torch.testing.assert_close(out, ((plain + mirrored) / 2).log())


def test_base_size_sets_scale_one_like_mmseg_test_img_scale():
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    Inference(base_size=(2048, 512), scales=(1.0, 0.5))(model, torch.zeros(1, 3, 300, 400), size=(300, 400))
    assert seen == [(512, 683), (256, 341)]


@pytest.mark.parametrize("size", range(8, 20))
def test_slide_windows_cover_every_pixel_with_the_fewest_windows(size):
    windows = slide_windows(size, size + 3, (8, 8), (4, 4))
    covered = torch.zeros(size, size + 3)
    for y0, y1, x0, x1 in windows:
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1
    rows = -(-(size - 8) // 4) + 1  # ceil((H - crop) / stride) + 1
    assert len(windows) == rows * (-(-(size - 5) // 4) + 1)


def test_an_image_smaller_than_the_crop_gets_one_window_even_with_stride_one():
    assert slide_windows(3, 5, (4, 8), (1, 1)) == [(0, 3, 0, 5)]


def test_multi_scale_without_flip_runs_every_view_unflipped():
    def model(x):  # not flip-equivariant: the column index is a logit
        column = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], *x.shape[-2:])
        return torch.stack([x[:, 0], column], dim=1)

    image = torch.randn(1, 3, 4, 8, generator=torch.Generator().manual_seed(1))
    out = Inference(scales=(1.0, 1.0))(model, image)
    torch.testing.assert_close(out, model(image).log_softmax(1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "slide", "crop_size": (1, 1), "stride": (1, 1)},
        {"scales": (0.01,)},
        {"base_size": (1, 1)},
    ],
)
def test_smallest_valid_settings_are_accepted(kwargs):
    Inference(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "slide"}, "needs crop_size"),
        ({"mode": "slide", "crop_size": (8, 8)}, "needs stride"),
        ({"scales": ()}, "scales"),
        ({"scales": (1.0, 0.0)}, r"scales=\(1.0, 0.0\) must be a non-empty list of positive factors"),
        (
            {"mode": "slide", "crop_size": (8,), "stride": (4, 4)},
            r"needs crop_size: \[height, width\], both >= 1; got \(8,\)",
        ),
        ({"mode": "slide", "crop_size": (8, 8), "stride": (0, 4)}, "needs stride"),
        ({"base_size": (512,)}, r"base_size=\(512,\) must be \(long side, short side\) or null"),
        ({"base_size": (512, 0)}, "base_size"),
        ({"mode": "tiles"}, "mode"),
    ],
)
def test_invalid_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Inference(**kwargs)


def test_logits_are_resized_with_the_networks_align_corners_for_one_view_and_several():
    # a model whose logits are half the image size: they are upsampled to the label size with align_corners
    # (random logits: the class margins vary over the image, so the softmax of the views sees the resizing too)
    half = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(0)) * 3

    def half_size(x):
        return half.expand(x.shape[0], -1, -1, -1)

    images = torch.zeros(1, 3, 6, 8)
    logits = half_size(images)
    for align in (False, True):
        expected = F.interpolate(logits, size=(6, 8), mode="bilinear", align_corners=align)
        torch.testing.assert_close(Inference()(half_size, images, align_corners=align), expected)
        views = Inference(scales=(1.0, 1.0))(half_size, images, align_corners=align)  # log of the mean softmax
        torch.testing.assert_close(views, expected.softmax(dim=1).log())
