"""The two consistency metrics on hand-built attention maps with known answers."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from dnlseg.analysis.attention_consistency import (
    boundary_band,
    boundary_consistency,
    category_consistency,
    image_window,
    key_boundary_band,
    key_classes,
    labels_on_call_grid,
    labels_on_grid,
    pairwise_category_consistency,
    sampled_category_consistency,
    unary_boundary_consistency,
)
from dnlseg.context import (
    BLOCKS,
    CrissCrossKeys,
    GroupKeys,
    InterlacedSparseAttention2d,
    ObjectContextAttention2d,
    TokenKeys,
    capture_attention,
)
from dnlseg.context.layers import pyramid_cover
from tests.helpers import captured_from_logits, wake_context_blocks

# A 4 x 4 key grid: class 0 on the left quarter (4 cells), class 1 elsewhere (12 cells).
LABELS = torch.tensor([[[0, 1, 1, 1]] * 4])  # (1, 4, 4)


def test_all_pairwise_mass_on_own_class_scores_one_over_its_area_fraction():
    keys = LABELS.flatten(1)  # (1, 16)
    own = (keys[:, None, :] == keys[:, :, None]).float()  # (1, 16 queries, 16 keys)
    attention = own / own.sum(-1, keepdim=True)
    values = pairwise_category_consistency(attention, keys, keys)
    expected = torch.where(keys[0] == 0, 16 / 4, 16 / 12)
    torch.testing.assert_close(values, expected)


def test_uniform_pairwise_attention_scores_one():
    keys = LABELS.flatten(1)
    values = pairwise_category_consistency(torch.full((1, 16, 16), 1 / 16), keys, keys)
    torch.testing.assert_close(values, torch.ones(16))


def test_ignored_queries_are_skipped():
    keys = LABELS.flatten(1)
    queries = keys.clone()
    queries[0, :5] = 255
    assert pairwise_category_consistency(torch.full((1, 16, 16), 1 / 16), queries, keys).shape == (11,)


def test_boundary_band_marks_cells_next_to_a_label_change():
    band = boundary_band(LABELS, radius=0)
    assert band[0].tolist() == [[True, True, False, False]] * 4
    assert boundary_band(LABELS, radius=1)[0].tolist() == [[True, True, True, False]] * 4


def test_unary_mass_on_the_band_scores_one_over_band_fraction_and_uniform_scores_one():
    band = boundary_band(LABELS, radius=0).flatten(1)  # 8 of 16 cells
    on_band = band.float() / band.sum()
    torch.testing.assert_close(unary_boundary_consistency(on_band, band), torch.tensor([2.0]))
    torch.testing.assert_close(unary_boundary_consistency(torch.full((1, 16), 1 / 16), band), torch.tensor([1.0]))


def test_labels_on_grid_uses_nearest_neighbour():
    mask = torch.zeros(1, 16, 16, dtype=torch.long)
    mask[:, :, 8:] = 3
    assert labels_on_grid(mask, (2, 2)).tolist() == [[[0, 3], [0, 3]]]


@pytest.mark.parametrize("radius", [0, 1, 2])
def test_image_without_boundary_gives_no_value(radius):
    band = boundary_band(torch.zeros(1, 4, 4, dtype=torch.long), radius).flatten(1)
    assert unary_boundary_consistency(torch.full((1, 16), 1 / 16), band).numel() == 0


def test_boundary_band_marks_both_sides_of_every_label_change_then_widens_by_the_radius():
    labels = torch.tensor([[[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]])
    edge = boundary_band(labels, radius=0)[0].int().tolist()
    assert edge == [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    band = boundary_band(labels)[0].int()  # default radius 1: the 3x3 neighbourhood of those cells
    assert band.tolist() == [[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]]
    assert not boundary_band(torch.zeros(1, 3, 3, dtype=torch.long)).any()


def test_labels_are_resized_by_nearest_neighbour():
    mask = torch.tensor([[[0, 0, 7, 7], [0, 0, 7, 7], [3, 3, 5, 5], [3, 3, 5, 5]]])
    assert labels_on_grid(mask, (2, 2)).tolist() == [[[0, 7], [3, 5]]]


def test_a_query_whose_class_has_no_key_cell_is_skipped():
    attention = torch.full((1, 2, 2), 0.5)
    query_labels, key_labels = torch.tensor([[0, 4]]), torch.tensor([[0, 0]])  # class 4 is on no key cell
    values = pairwise_category_consistency(attention, query_labels, key_labels)
    assert values.tolist() == [1.0]  # only the class-0 query: mass 1 over area 1
    # an ignored query is skipped by default (ignore_index 255) even where ignored keys give it an area
    assert pairwise_category_consistency(attention, torch.tensor([[255, 0]]), torch.tensor([[0, 255]])).tolist() == [
        1.0
    ]


def random_capture(seed=0, n=2, p=12, pk=12):
    """Factors of random pairwise and unary logits on a 3 x 4 grid (P = Pk = 12)."""
    generator = torch.Generator().manual_seed(seed)
    pairwise = torch.randn(n, p, pk, generator=generator, dtype=torch.float64) * 3
    unary = torch.randn(n, 1, pk, generator=generator, dtype=torch.float64) * 3
    return captured_from_logits(pairwise, unary, (3, 4), (3, 4))


# labels of two 3 x 4 images with ignored cells (7 here) among queries and keys, and a class on one image only
QUERY_LABELS = torch.tensor([[0, 0, 1, 1, 2, 2, 7, 0, 1, 1, 2, 7], [3, 3, 3, 0, 0, 7, 7, 0, 0, 3, 3, 3]])
KEY_LABELS = torch.tensor([[0, 7, 1, 1, 2, 2, 2, 0, 1, 1, 2, 2], [3, 3, 3, 0, 0, 0, 7, 0, 7, 3, 3, 3]])


def reference_consistency(captured, query_labels, key_labels, ignore_index):
    """pairwise_category_consistency on the whole materialised softmax."""
    attention = torch.softmax(captured.pairwise_logits(), dim=-1)
    return pairwise_category_consistency(attention, query_labels, key_labels, ignore_index)


def test_every_query_through_the_fused_kernel_equals_the_materialised_metric_with_ignored_labels():
    captured = random_capture()
    values = category_consistency(captured, QUERY_LABELS, KEY_LABELS, ignore_index=7)
    expected = reference_consistency(captured, QUERY_LABELS, KEY_LABELS, 7)
    assert values.shape == (10 + 10,)  # the labelled queries of both images
    torch.testing.assert_close(values, expected)


def test_sampled_rows_give_the_materialised_metric_of_those_queries():
    captured = random_capture(seed=1)
    rows = torch.tensor([[0, 6, 11, 4], [5, 9, 2, 3]])  # two ignored queries (6, 11 | 5) among them
    values = sampled_category_consistency(captured, QUERY_LABELS, KEY_LABELS, rows, ignore_index=7)
    attention = torch.softmax(captured.pairwise_logits(), dim=-1)  # (N, P, Pk)
    picked = torch.gather(attention, 1, rows[..., None].expand(-1, -1, 12))
    expected = pairwise_category_consistency(picked, torch.gather(QUERY_LABELS, 1, rows), KEY_LABELS, 7)
    assert values.shape == (2 + 3,)
    torch.testing.assert_close(values, expected)  # float64 factors: float64 softmax rows, as materialised


def test_boundary_consistency_of_a_capture_is_the_unary_mass_on_the_band():
    captured = random_capture(seed=2)
    key_labels = KEY_LABELS.reshape(2, 3, 4)
    for radius in (0, 1):
        band = boundary_band(key_labels, radius).flatten(1)  # (N, Pk)
        s = torch.softmax(captured.unary_logits[:, 0], dim=-1)  # float64 factors: a float64 softmax
        expected = (s * band).sum(-1) / band.float().mean(-1)
        torch.testing.assert_close(boundary_consistency(captured, key_labels, radius), expected)
    default = boundary_consistency(captured, key_labels)  # radius 1
    torch.testing.assert_close(default, boundary_consistency(captured, key_labels, 1))


def test_labels_on_grid_keeps_integer_labels_above_255():
    mask = torch.tensor([[[300, 1], [2, 65535]]])
    grid = labels_on_grid(mask, (2, 2))
    assert grid.dtype == torch.long and grid.tolist() == [[[300, 1], [2, 65535]]]


def test_queries_of_a_class_missing_from_the_keys_are_skipped_through_the_fused_kernel():
    # Keys hold classes 0 and 2 only; queries of class 1 (inside the class range) and 4 (above every key class,
    # no ignored query to widen the range) have no own-class area: skipped, not 0 / 0 nor an index error.
    captured = random_capture(seed=3, n=1, p=4, pk=12)
    query_labels = torch.tensor([[0, 1, 2, 4]])
    key_labels = torch.tensor([[0, 0, 0, 2, 2, 2, 2, 2, 2, 0, 0, 0]])
    values = category_consistency(captured, query_labels, key_labels)
    a = torch.softmax(captured.pairwise_logits(), dim=-1)[0]  # (4, 12)
    own = key_labels[0] == 0
    expected = torch.stack([a[0, own].sum() / 0.5, a[2, ~own].sum() / 0.5])  # classes 0 and 2, area 6 / 12 each
    torch.testing.assert_close(values, expected, check_dtype=False)


def test_one_class_with_ignored_keys_and_queries_uses_the_default_ignore_label():
    # only class 0 besides the ignore label 255 (the default): one class column; an ignored key takes mass but no
    # class, an ignored query gives no value
    captured = random_capture(seed=4, n=1, p=3, pk=4)
    query_labels, key_labels = torch.tensor([[0, 255, 0]]), torch.tensor([[0, 255, 0, 0]])
    values = category_consistency(captured, query_labels, key_labels)
    a = torch.softmax(captured.pairwise_logits(), dim=-1)[0]  # (3, 4)
    own = key_labels[0] == 0
    torch.testing.assert_close(values, torch.stack([a[0, own].sum(), a[2, own].sum()]) / 0.75, check_dtype=False)
    rows = torch.tensor([[0, 1]])
    sampled = sampled_category_consistency(captured, query_labels, key_labels, rows)
    torch.testing.assert_close(sampled, values[:1], check_dtype=False)  # query 1 is ignored by default


def test_boundary_consistency_defaults_to_a_band_of_one_cell():
    # one row of 8 keys, a class change between cells 5 and 6: the band of radius 1 is cells 4..7, of radius 2 3..7
    generator = torch.Generator().manual_seed(5)
    unary = torch.randn(1, 1, 8, generator=generator) * 3
    captured = captured_from_logits(torch.zeros(1, 8, 8), unary, (1, 8), (1, 8))
    key_labels = torch.tensor([[[0, 0, 0, 0, 0, 0, 1, 1]]])
    s = torch.softmax(unary[0, 0], dim=-1)
    torch.testing.assert_close(boundary_consistency(captured, key_labels), (s[4:].sum() / (4 / 8))[None])


def region_capture(pairwise: torch.Tensor, cover: torch.Tensor, cover_size: tuple[int, int], query_size):
    """A capture of queries on ``query_size`` over K keys that are not pixels, covering ``cover`` (N or 1, K, Pc)."""
    K = cover.shape[1]
    captured = captured_from_logits(pairwise, torch.zeros(pairwise.shape[0], 1, K), query_size, (K, 1))
    return dataclasses.replace(captured, keys=TokenKeys("class regions", cover, cover_size))


def test_region_keys_score_the_attention_weighted_chance_that_a_key_pixel_has_the_querys_class():
    # 1 x 4 pixels of classes 0, 0, 1 and ignored; region 0 covers pixels 0-1 (all class 0), region 1 pixels 2-3
    # (half class 1, half ignored): D = [[1, 0], [0, 0.5]], chance = mean over the regions = [0.5, 0.25].
    masks = torch.tensor([[[0, 0, 1, 255]]])
    cover = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]])
    # query 0 (class 0) attends 3:1 to the regions, query 1 (class 1) 1:9
    pairwise = torch.tensor([[[math.log(3), 0.0], [0.0, math.log(9)]]])
    captured = region_capture(pairwise, cover, (1, 4), (1, 2))
    classes = key_classes(masks, captured, num_classes=2)
    torch.testing.assert_close(classes, torch.tensor([[[1.0, 0.0], [0.0, 0.5]]]))
    # query 0: 0.75 * 1 / 0.5 = 1.5; query 1: 0.9 * 0.5 / 0.25 = 1.8
    query_labels = torch.tensor([[0, 1]])
    torch.testing.assert_close(category_consistency(captured, query_labels, classes), torch.tensor([1.5, 1.8]))
    rows = torch.tensor([[1, 0]])
    torch.testing.assert_close(
        sampled_category_consistency(captured, query_labels, classes, rows), torch.tensor([1.8, 1.5])
    )


def test_a_region_cover_shared_by_the_images_of_a_batch_gets_each_images_labels():
    # ANN's pyramid cells cover the same pixels in every image: (1, K, Pc) against two images' labels
    cover = pyramid_cover((2, 2), (1, 2))  # (5, 4): the whole map, then each pixel
    masks = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 0]]])
    captured = region_capture(torch.zeros(2, 4, 5), cover[None], (2, 2), (2, 2))
    classes = key_classes(masks, captured, num_classes=3)
    expected = torch.stack(
        [torch.cat([m.flatten().bincount(minlength=3)[None] / 4, F.one_hot(m.flatten(), 3)]) for m in masks]
    )
    torch.testing.assert_close(classes, expected.float())


@pytest.mark.parametrize("make", ["ocr", "apnb"])
def test_the_category_consistency_of_real_region_keys_equals_its_materialised_definition(make):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 6)
    if make == "ocr":
        block, args = ObjectContextAttention2d(8).eval(), (x, torch.randn(2, 4, 5, 6) * 3)
    else:
        block, args = BLOCKS["apnb"].build(8, reduction=2, pool_scales=(1, 2, 3)).eval(), (x,)
    wake_context_blocks(block)
    with capture_attention(block) as captured, torch.no_grad():
        block(*args)
    (call,) = captured[""]
    masks = torch.randint(0, 4, (2, 5, 6), generator=torch.Generator().manual_seed(1))
    masks[0, 0, :3] = 255
    classes = key_classes(masks, call, num_classes=4)
    # materialised: every query's softmax over the keys, each key's class shares counted pixel by pixel
    attention = torch.softmax(call.pairwise_logits(), dim=-1)  # (N, P, K)
    cover = call.keys.cover.expand(2, -1, -1)  # (N, K, P)
    shares = torch.stack([(cover * (masks.flatten(1)[:, None] == c)).sum(-1) for c in range(4)], dim=-1)  # (N, K, 4)
    labels = masks.flatten(1)
    expected = []
    for n in range(2):
        for i in range(30):
            c = int(labels[n, i])
            if c != 255:
                expected.append((attention[n, i] @ shares[n, :, c]) / shares[n, :, c].mean())
    values = category_consistency(call, labels, classes)
    torch.testing.assert_close(values, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert values.shape == (57,) and not torch.allclose(values, torch.ones(57), atol=1e-3)  # woken: not uniform
    rows = torch.tensor([[0, 7, 29], [3, 4, 5]])  # query 0 of image 0 is ignored
    sampled = sampled_category_consistency(call, labels, classes, rows)
    labelled = [(n, i) for n in range(2) for i in range(30) if labels[n, i] != 255]
    full = dict(zip(labelled, values, strict=True))
    torch.testing.assert_close(sampled, torch.stack([full[0, 7], full[0, 29], full[1, 3], full[1, 4], full[1, 5]]))


GRID = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 2, 2], [3, 0, 1, 2, 2], [3, 3, 3, 2, 2]])  # 4 x 5 labels


@pytest.mark.parametrize("keys", ["criss_cross", "groups"])
def test_uniform_attention_over_each_querys_own_keys_scores_one(keys):
    """Chance is uniform attention over the query's keys (its row and column, its group), not over the whole grid: a
    query whose class fills its row and column more than the image must not score above 1 for attending evenly."""
    P = GRID.numel()
    captured = criss_cross_or_groups(keys, torch.zeros(1, P, P))
    labels = GRID.flatten()[None]
    torch.testing.assert_close(category_consistency(captured, labels, labels), torch.ones(P))
    rows = torch.tensor([[0, 7, 19, 12]])
    torch.testing.assert_close(sampled_category_consistency(captured, labels, labels, rows), torch.ones(4))


def criss_cross_or_groups(keys: str, pairwise: torch.Tensor):
    captured = captured_from_logits(pairwise, torch.zeros(1, 1, pairwise.shape[-1]), (4, 5), (4, 5))
    if keys == "criss_cross":
        return dataclasses.replace(captured, keys=CrissCrossKeys((4, 5)))
    groups = torch.arange(20) % 4  # 4 interlaced groups of 5 (ISA's long range: every 4th position)
    order = torch.argsort(groups, stable=True)
    return dataclasses.replace(captured, keys=GroupKeys((4, 5), groups, order, (0, 0, 4, 5)))


@pytest.mark.parametrize("keys", ["criss_cross", "groups"])
def test_the_consistency_over_a_querys_own_keys_equals_its_materialised_definition(keys):
    P = GRID.numel()
    pairwise = torch.randn(1, P, P, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    captured = criss_cross_or_groups(keys, pairwise)
    inside = captured.key_mask(torch.arange(P)[None])[0]  # (P, P)
    attention = torch.softmax(pairwise[0].masked_fill(~inside, -math.inf), dim=-1)
    labels = GRID.flatten()
    same = labels[:, None] == labels[None, :]
    expected = (attention * same).sum(-1) / ((inside & same).sum(-1) / inside.sum(-1))
    torch.testing.assert_close(category_consistency(captured, labels[None], labels[None]), expected)
    if keys == "groups":  # ISA's kernel in float64 through grouped_attention
        groups = (labels[None] == 0).long()
        rows = torch.tensor([[1, 8, 16]])
        sampled = sampled_category_consistency(captured, groups, groups, rows)
        attention_rows = attention[rows[0]]
        same_rows = groups[0][rows[0]][:, None] == groups[0][None]
        share = (inside[rows[0]] & same_rows).sum(-1) / inside[rows[0]].sum(-1)
        torch.testing.assert_close(sampled, (attention_rows * same_rows).sum(-1) / share)


def test_isa_padding_is_unlabelled_and_lies_on_no_boundary():
    # a 6 x 7 map padded to whole 4 x 4 groups (8 x 8): one row above and below, one column on the right
    block = InterlacedSparseAttention2d(8, group_size=(4, 4)).eval()
    with capture_attention(block) as captured, torch.no_grad():
        block(torch.randn(1, 8, 6, 7))
    call = captured["long_range"][0]
    assert call.keys.image == (1, 0, 6, 7) and image_window(call) == (1, 0, 6, 7)
    masks = torch.zeros(1, 6, 7, dtype=torch.long)
    masks[:, 3:, 4:] = 2
    labels = labels_on_call_grid(masks, call, "query", ignore_index=255)
    assert labels.shape == (1, 8, 8) and (labels[0, 1:7, :7] == masks[0]).all()
    assert (labels[0, 0] == 255).all() and (labels[0, 7] == 255).all() and (labels[0, :, 7] == 255).all()
    band = key_boundary_band(masks, call, radius=0).view(8, 8)
    torch.testing.assert_close(band[1:7, :7], boundary_band(masks, radius=0)[0])
    assert not band[0].any() and not band[7].any() and not band[:, 7].any()  # the image's edge is no boundary
    values = category_consistency(call, labels.flatten(1), key_classes(masks, call, 3))
    assert values.numel() == 42  # the image's 42 labelled queries; the padding's 22 skipped
