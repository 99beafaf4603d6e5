"""``dnlseg.deploy.ImageSegmenter``: uint8 RGB in, normalised exactly as ``dnlseg predict``'s data pipeline does, the
network's logits out."""

import numpy as np
import torch
from torch import nn

from dnlseg.data import IMAGENET_MEAN, IMAGENET_STD
from dnlseg.data.transforms import eval_transform
from dnlseg.deploy import ImageSegmenter
from dnlseg.models.network import SegmentationOutput


class Inputs(nn.Module):
    """A network whose logits are its input: what the segmenter hands the network."""

    def forward(self, x):
        return SegmentationOutput(x, None)


def test_the_graph_normalises_uint8_images_as_the_predict_pipeline_does():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)  # (H, W, 3) as the loaders read it
    image[0, :3] = [[0, 0, 0], [255, 255, 255], [124, 116, 104]]  # the extremes and ~255 * mean
    want = eval_transform()(image=image)["image"].transpose(2, 0, 1)  # (3, H, W) float32, albumentations
    segmenter = ImageSegmenter(Inputs(), IMAGENET_MEAN, IMAGENET_STD)
    got = segmenter(torch.from_numpy(image.transpose(2, 0, 1).copy())[None])[0].numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_the_output_is_the_networks_logits():
    torch.manual_seed(0)
    network = nn.Conv2d(3, 4, 1)
    wrapped = type("Net", (nn.Module,), {"forward": lambda self, x: SegmentationOutput(network(x), None)})()
    wrapped.network = network
    segmenter = ImageSegmenter(wrapped, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # x = image
    image = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    torch.testing.assert_close(segmenter(image), network(image.float()))
