"""Cross-entropy with ignore label and OHEM; the loss terms of the global batch under DDP."""

import pytest
import torch
import torch.nn.functional as F

from dnlseg.models.losses import SegmentationLoss, mean_loss_terms
from dnlseg.models.nonfinite import skip_nonfinite_loss


def test_plain_loss_is_cross_entropy_ignoring_255():
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    labelled = target != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[labelled], target[labelled])
    torch.testing.assert_close(SegmentationLoss()(logits, target), expected)


def test_ohem_keeps_only_pixels_below_the_threshold_when_enough_are():
    # Pixel 0 is confident (p ~ 1), pixels 1..3 are hard (p = 1/2).
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0, 0] = 20.0
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    loss = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=1)
    keep = loss.hard_pixels(logits, target)
    assert keep.tolist() == [[[False, True, True, True]]]
    torch.testing.assert_close(loss(logits, target), torch.tensor(0.6931472))


def test_ohem_min_kept_raises_the_threshold():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0] = torch.tensor([9.0, 5.0, 3.0, 1.0])  # p(class 0) all above 0.7
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    keep = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=2).hard_pixels(logits, target)
    assert keep.tolist() == [[[False, False, True, True]]]  # the two hardest


def test_ohem_min_kept_counts_per_image_of_the_batch():
    # Two images of 4 pixels, p(true class) all above 0.7: with min_kept = 2 per image OHEM keeps the 2 x 2 = 4
    # hardest pixels of the batch (mmseg's rule: threshold = the 5th smallest probability, kept strictly below).
    logits = torch.zeros(2, 2, 1, 4)
    logits[0, 0, 0] = torch.tensor([9.0, 5.0, 3.0, 1.5])  # p = sigmoid(margin): 0.9999, 0.993, 0.95, 0.82
    logits[1, 0, 0] = torch.tensor([8.0, 4.0, 2.0, 1.0])  # 0.9997, 0.98, 0.88, 0.73
    target = torch.zeros(2, 1, 4, dtype=torch.long)
    keep = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=2).hard_pixels(logits, target)
    assert keep.tolist() == [[[False, False, True, True]], [[False, False, True, True]]]


def test_ohem_never_keeps_ignored_pixels():
    logits = torch.zeros(1, 3, 2, 2)
    target = torch.full((1, 2, 2), 255)
    target[0, 0, 0] = 1
    keep = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=10).hard_pixels(logits, target)
    assert keep.sum() == 1 and keep[0, 0, 0]


def test_bad_ohem_threshold_raises():
    with pytest.raises(ValueError, match="ohem_threshold=1.5"):
        SegmentationLoss(ohem_threshold=1.5)


class TwoRankStrategy:
    """Stands in for DDP: ``reduce`` averages this process's tensor with another rank's, and counts the calls."""

    def __init__(self, other: torch.Tensor):
        self.other, self.calls = other, 0

    def reduce(self, tensor, reduce_op):
        assert reduce_op == "mean"
        self.calls += 1
        return (tensor + self.other) / 2


def test_loss_terms_are_averaged_over_processes_in_one_collective():
    losses = {
        "main_loss": torch.tensor(1.0, requires_grad=True),
        "loss": torch.tensor(2.0),
        "aux_loss": torch.tensor(3.0),
    }
    strategy = TwoRankStrategy(other=torch.tensor([3.0, 4.0, 5.0]))
    terms = mean_loss_terms(losses, strategy)
    assert strategy.calls == 1
    assert list(terms) == ["main_loss", "loss", "aux_loss"]
    assert [t.item() for t in terms.values()] == [2.0, 3.0, 4.0]
    assert not any(t.requires_grad for t in terms.values())
    assert losses["main_loss"].item() == 1.0  # the process's own terms are untouched


def test_a_nan_on_another_process_makes_every_process_see_a_nonfinite_loss():
    losses = {"loss": torch.tensor(2.0), "main_loss": torch.tensor(2.0)}
    terms = mean_loss_terms(losses, TwoRankStrategy(other=torch.tensor([float("nan"), 1.0])))
    assert skip_nonfinite_loss(terms, 3, "skip") is True
    assert skip_nonfinite_loss(mean_loss_terms(losses), 3, "stop") is False  # this process alone: finite


def test_all_pixels_normalisation_is_mmsegs_cross_entropy_loss():
    """``normalization="all"`` = mmseg's ``CrossEntropyLoss()`` (``avg_non_ignore=False``): the pixel losses
    summed over the labelled pixels and divided by all N * H * W, ignored ones included."""
    from mmseg_reference import import_mmseg

    reference = import_mmseg().losses.CrossEntropyLoss(loss_weight=1.0)
    logits = torch.randn(2, 5, 6, 7)
    target = torch.randint(0, 5, (2, 6, 7))
    target[0, :3] = 255
    loss = SegmentationLoss(normalization="all")(logits, target)
    torch.testing.assert_close(loss, reference(logits, target, ignore_index=255), rtol=0, atol=0)
    labelled = target != 255
    per_pixel = F.cross_entropy(logits.permute(0, 2, 3, 1)[labelled], target[labelled], reduction="sum")
    torch.testing.assert_close(loss, per_pixel / target.numel())
    assert loss < SegmentationLoss()(logits, target)  # the labelled-pixel mean divides by fewer pixels


def test_all_pixels_normalisation_with_ohem_counts_all_pixels():
    logits = torch.zeros(1, 2, 1, 4)
    target = torch.tensor([[[0, 0, 255, 255]]])
    loss = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=1, normalization="all")(logits, target)
    torch.testing.assert_close(loss, torch.tensor(2 * 0.6931472 / 4))


def test_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="normalization='pixels' must be one of"):
        SegmentationLoss(normalization="pixels")


def labelled_counts_all_reduce(counts: list[int]):
    """``dist.all_reduce`` in a 2-process run whose ranks label ``counts`` pixels: the in-place sum."""

    def all_reduce(tensor, op=None, group=None):
        tensor.fill_(float(sum(counts)))

    return all_reduce


@pytest.mark.parametrize("ohem_threshold", [None, 1.0])  # 1.0: OHEM that keeps every labelled pixel
def test_ddp_loss_divides_by_the_mean_count_over_ranks_so_the_averaged_gradient_is_the_global_batch_mean(
    monkeypatch, ohem_threshold
):
    # Two "ranks" in one process: the collective is replaced by the sum over both ranks' labelled-pixel counts.
    # DDP averages the ranks' gradients; that average must be the gradient of the one-device mean over the global
    # batch -- not the mean of per-rank means, which weights rank 1's few labelled pixels more.
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 6)
    target = torch.randint(0, 3, (4, 5, 6))
    target[3, :4] = 255  # rank 1 (images 2, 3) labels fewer pixels than rank 0
    parts = [(logits[:2].clone().requires_grad_(), target[:2]), (logits[2:].clone().requires_grad_(), target[2:])]
    counts = [int((t != 255).sum()) for _, t in parts]
    assert counts[0] != counts[1]
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", labelled_counts_all_reduce(counts))
    criterion = SegmentationLoss(ohem_threshold=ohem_threshold, ohem_min_kept=0)
    for x, t in parts:
        criterion(x, t).backward()
    ddp_gradient = torch.cat([x.grad for x, _ in parts]) / 2  # DDP's mean over the 2 ranks
    full = logits.clone().requires_grad_()
    F.cross_entropy(full, target, ignore_index=255).backward()  # one device, the global batch
    torch.testing.assert_close(ddp_gradient, full.grad)
    with torch.no_grad():  # evaluation (no gradient): the plain local mean, no collective
        monkeypatch.setattr(torch.distributed, "all_reduce", None)
        x, t = parts[1]
        torch.testing.assert_close(criterion(x, t), F.cross_entropy(x, t, ignore_index=255))


def test_ohem_min_kept_one_keeps_the_hardest_pixel_and_one_kept_pixel_is_the_whole_mean():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[4.0, 6.0], [5.0, 9.0]])  # class 1 true everywhere: p = 0.982, 0.998, 0.993, 0.9999
    target = torch.ones(1, 2, 2, dtype=torch.long)
    keep = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=1).hard_pixels(logits, target)
    assert keep.tolist() == [[[True, False], [False, False]]]  # p(class 1) read at each pixel's own position
    logits[0, 1, 1, 0] = 0.0  # one hard pixel (p = 0.5): the loss is its cross-entropy over a count of 1
    loss = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=0)
    assert loss.hard_pixels(logits, target).sum() == 1
    torch.testing.assert_close(loss(logits, target), torch.tensor(0.6931472))


def test_ohem_on_an_image_without_labelled_pixels_keeps_nothing_and_the_loss_is_zero():
    logits, target = torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255)
    loss = SegmentationLoss(ohem_threshold=0.7, ohem_min_kept=4)
    assert not loss.hard_pixels(logits, target).any() and loss(logits, target).item() == 0.0


def test_the_defaults_and_the_setting_checks():
    default = SegmentationLoss()
    assert (default.ignore_index, default.ohem_threshold, default.ohem_min_kept) == (255, None, 100_000)  # mmseg's
    SegmentationLoss(ohem_threshold=1.0, ohem_min_kept=0)
    with pytest.raises(ValueError, match=r"ohem_threshold=0 must be in \(0, 1\] or null"):
        SegmentationLoss(ohem_threshold=0)
    with pytest.raises(ValueError, match="^model.loss.ohem_min_kept=-1 must be >= 0$"):
        SegmentationLoss(ohem_min_kept=-1)


def test_a_one_process_group_is_not_distributed(monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 1)
    monkeypatch.setattr(torch.distributed, "all_reduce", None)  # a collective would fail
    logits, target = torch.randn(1, 3, 2, 2, requires_grad=True), torch.randint(0, 3, (1, 2, 2))
    torch.testing.assert_close(SegmentationLoss()(logits, target), F.cross_entropy(logits, target))
