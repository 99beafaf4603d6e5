"""The synthetic options of the ablation's settings: texture brightness levels, ink on the keys' rims, labels
that reach the boundaries -- each rule checked against what the pixels show."""

import cv2
import numpy as np
import pytest

from dnlseg.data import SyntheticDataModule, generate_sample
from dnlseg.data.synthetic import INK
from dnlseg.data.synthetic.scene import GREY_HI, GREY_LO, TEXTURE_ANGLES, TEXTURE_LEVELS

SIZE = 128


def samples(n, groups=2, **scene):
    return [generate_sample(0, i, "train", SIZE, SIZE, 0.0, groups, **scene) for i in range(n)]


def inked_class(pixels: np.ndarray) -> int:
    """The class whose ink (INK, mean-free) the mean colour of ``pixels`` (M, 3) is closest to in direction."""
    ink = INK - INK.mean(axis=1, keepdims=True)
    colour = pixels.astype(np.float64).mean(axis=0)
    return int(np.argmax(ink[1:] @ (colour - colour.mean()))) + 1


def chroma(image: np.ndarray) -> np.ndarray:
    """(H, W) max - min over the RGB channels: 0 on grey pixels."""
    return image.max(axis=-1).astype(int) - image.min(axis=-1).astype(int)


def test_texture_levels_set_the_stripe_brightness_of_each_texture_on_members():
    seen = set()
    for s in samples(8, groups=4, texture_levels=True):
        members = (s.group >= 0) & ~s.key & (s.mask != 255)
        for region in np.unique(s.region[members]):
            pixels = s.image[members & (s.region == region)].mean(axis=-1)  # grey: one channel is enough
            texture = int(s.texture[s.region == region][0])
            # brightest stripe = GREY_LO + (GREY_HI * level - GREY_LO) * (0.5 + 0.5 * 0.8) at difficulty 0
            expected = 255 * (GREY_LO + (GREY_HI * TEXTURE_LEVELS[texture] - GREY_LO) * 0.9)
            assert abs(np.percentile(pixels, 98) - expected) < 12, (texture, np.percentile(pixels, 98), expected)
            seen.add(texture)
    assert seen == {0, 1, 2, 3}


def test_texture_levels_keep_the_label_rule_class_of_the_key_with_the_same_texture():
    for s in samples(8, groups=3, texture_levels=True):
        for g in range(3):
            key = (s.group == g) & s.key & (s.mask != 255)
            members = (s.group == g) & ~s.key & (s.mask != 255)
            assert (s.mask[members] == inked_class(s.image[key])).all()
            assert (s.texture[members] == s.texture[key][0]).all()


def test_without_texture_levels_every_texture_has_the_same_brightness():
    brightest = {}
    for s in samples(8, groups=4):
        members = (s.group >= 0) & ~s.key & (s.mask != 255)
        for t in range(4):
            if (members & (s.texture == t)).any():
                brightest.setdefault(t, []).append(np.percentile(s.image[members & (s.texture == t)], 98))
    means = [np.mean(v) for v in brightest.values()]
    assert np.ptp(means) < 6


@pytest.mark.parametrize("groups", [1, 2])
def test_outline_ink_lies_only_on_a_rim_inside_each_key_and_names_the_class(groups):
    for s in samples(8, groups=groups, ink="outline"):
        labelled = s.mask != 255  # void clutter blobs have random colours
        coloured = (chroma(s.image) > 60) & labelled
        # distance of each pixel to the nearest pixel of another region (region boundary), in pixels
        inside = np.zeros(s.region.shape, dtype=np.float32)
        for region in np.unique(s.region):
            own = (s.region == region).astype(np.uint8)
            inside = np.where(own > 0, cv2.distanceTransform(own, cv2.DIST_L2, 5), inside)
        assert coloured.any()
        assert s.key[coloured].all(), "ink outside the keys"
        assert np.median(inside[coloured]) <= 3.0 and inside[coloured].max() <= 8.0, "ink off the rim"
        interior = s.key & labelled & (inside > 9)
        assert chroma(s.image)[interior].mean() < 15, "the key's stripes must be grey (pixel noise only)"
        members = (s.group >= 0) & ~s.key & labelled
        assert chroma(s.image)[members].mean() < 15
        for g in range(groups):
            rim = coloured & (s.group == g)
            key_members = (s.group == g) & ~s.key & labelled
            assert (s.mask[key_members] == inked_class(s.image[rim])).all()
            assert (s.mask[(s.group == g) & s.key & labelled] == inked_class(s.image[rim])).all()


def test_stripes_ink_fills_the_key_interior():
    for s in samples(4, groups=1):
        inside = cv2.distanceTransform(s.key.astype(np.uint8), cv2.DIST_L2, 5)
        assert np.percentile(chroma(s.image)[s.key & (inside > 5)], 90) > 60


def test_without_boundary_void_labels_reach_the_boundaries_and_only_the_blobs_stay_void():
    for default, open_ in zip(samples(8), samples(8, boundary_void=False), strict=True):
        assert np.array_equal(default.image, open_.image)  # the same scene, only the label differs
        labelled = default.mask != 255
        assert np.array_equal(open_.mask[labelled], default.mask[labelled])
        assert ((open_.mask == 255) <= (default.mask == 255)).all()
        for axis in (0, 1):  # labelled neighbours in different regions now exist: the labels meet
            a = [slice(None)] * 2
            b = [slice(None)] * 2
            a[axis], b[axis] = slice(1, None), slice(None, -1)
            both = (open_.mask[tuple(a)] != 255) & (open_.mask[tuple(b)] != 255)
            assert (open_.region[tuple(a)] != open_.region[tuple(b)])[both].any()
        for region in np.unique(open_.region):  # one class per region
            values = open_.mask[(open_.region == region) & (open_.mask != 255)]
            assert len(np.unique(values)) <= 1
        assert (open_.mask == 255).mean() < 0.05  # the clutter blobs only


def test_data_module_passes_the_scene_options_to_its_images():
    scene = {"texture_levels": True, "random_textures": True, "ink": "outline", "boundary_void": False}
    dm = SyntheticDataModule(num_train=2, num_val=1, image_size=64, difficulty=0.0, groups=2, seed=3, **scene)
    assert all(dm.hparams[k] == v for k, v in scene.items())
    sample = dm.train_dataloader().dataset.sample(1)
    expected = generate_sample(3, 1, "train", 64, 64, 0.0, 2, **scene)
    assert np.array_equal(sample.image, expected.image) and np.array_equal(sample.mask, expected.mask)
    assert not np.array_equal(sample.image, generate_sample(3, 1, "train", 64, 64, 0.0, 2).image)


def test_unknown_ink_raises_value_error_naming_it():
    with pytest.raises(ValueError, match="ink='rims' must be one of"):
        SyntheticDataModule(ink="rims")
    with pytest.raises(ValueError, match="ink="):
        generate_sample(0, 0, ink="rims")


def stripe_angle(grey: np.ndarray, cells: np.ndarray) -> float:
    """Stripe angle in [0, pi) of ``cells`` (H, W bool) from the image's gradient structure tensor: the stripes
    vary along (cos a, sin a), so the gradients point along a (mod pi)."""
    gx = cv2.Sobel(grey, cv2.CV_64F, 1, 0, ksize=3)[cells]
    gy = cv2.Sobel(grey, cv2.CV_64F, 0, 1, ksize=3)[cells]
    return float(0.5 * np.arctan2(2 * (gx * gy).sum(), (gx**2 - gy**2).sum())) % np.pi


def interior(s, region: int) -> np.ndarray:
    own = (s.region == region).astype(np.uint8)
    return cv2.distanceTransform(own, cv2.DIST_L2, 5) > 3


def angle_gap(a: float, b: float) -> float:
    d = abs(a - b) % np.pi
    return min(d, np.pi - d)


def test_random_textures_turn_each_images_angles_and_members_keep_their_keys_angle():
    offsets = []
    for s in samples(8, groups=2, random_textures=True):
        grey = s.image.mean(axis=-1)
        key_angle = {}
        for g in range(2):
            (key_region,) = np.unique(s.region[(s.group == g) & s.key])
            key_angle[g] = stripe_angle(grey, interior(s, key_region))
        assert angle_gap(key_angle[0], key_angle[1]) > np.radians(35)  # distinct textures stay 45 degrees apart
        for region in np.unique(s.region[(s.group >= 0) & ~s.key]):
            g = int(s.group[s.region == region][0])
            assert angle_gap(stripe_angle(grey, interior(s, region)), key_angle[g]) < np.radians(8)
            key_class = np.unique(s.mask[s.key & (s.group == g) & (s.mask != 255)])
            assert (s.mask[(s.region == region) & (s.mask != 255)] == key_class).all()
        offset = np.degrees(key_angle[0]) % 45
        offsets.append(min(offset, 45 - offset))  # distance to the nearest fixed angle: ~0 without the turn
    assert np.ptp(offsets) > 6, offsets


def test_without_random_textures_the_angles_are_the_fixed_texture_angles():
    for s in samples(4, groups=2):
        grey = s.image.mean(axis=-1)
        for region in np.unique(s.region[s.group >= 0]):
            texture = int(s.texture[s.region == region][0])
            assert angle_gap(stripe_angle(grey, interior(s, region)), TEXTURE_ANGLES[texture]) < np.radians(8)


def test_random_textures_draw_each_groups_level_per_image_shared_by_its_members():
    levels = []
    for s in samples(8, groups=2, texture_levels=True, random_textures=True):
        for g in range(2):
            brightest = [
                np.percentile(s.image[interior(s, r)].mean(axis=-1), 98)
                for r in np.unique(s.region[(s.group == g) & ~s.key])
            ]
            if len(brightest) >= 2:
                assert np.ptp(brightest) < 12  # one level per group
            if brightest:
                levels.append(np.mean(brightest) / 255)
    # level x GREY_HI of the brightest stripe at difficulty 0: GREY_LO + (GREY_HI * level - GREY_LO) * 0.9
    drawn = (np.array(levels) - GREY_LO * 0.1) / (0.9 * GREY_HI)
    fixed = np.abs(drawn[:, None] - np.array(TEXTURE_LEVELS)[None]).min(axis=1)
    assert (drawn > 0.40).all() and (drawn < 1.05).all() and fixed.max() > 0.04, drawn
