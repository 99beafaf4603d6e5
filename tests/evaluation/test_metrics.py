"""Dataset-level IoU from one confusion matrix."""

import math

import pytest
import torch

from dnlseg.evaluation import SegmentationIoU, confusion_summary


def test_confusion_matrix_accumulates_over_batches_and_ignores_255():
    metric = SegmentationIoU(3)
    metric.update(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 1], [1, 255]]))
    metric.update(torch.tensor([[0, 0]]), torch.tensor([[0, 2]]))
    assert metric.confmat.tolist() == [[2, 0, 0], [0, 1, 1], [1, 0, 0]]


def test_summary_matches_hand_computed_iou():
    confmat = torch.tensor([[2, 0, 0], [0, 1, 1], [1, 0, 0]])
    s = confusion_summary(confmat, ["a", "b", "c"])
    # IoU_a = 2/(2+1+0), IoU_b = 1/(1+1), IoU_c = 0/(1+1)
    assert s["IoU/a"].item() == pytest.approx(2 / 3)
    assert s["IoU/b"].item() == pytest.approx(0.5)
    assert s["IoU/c"].item() == pytest.approx(0.0)
    assert s["mIoU"].item() == pytest.approx((2 / 3 + 0.5) / 3)
    assert s["pixel_acc"].item() == pytest.approx(3 / 5)


def test_class_absent_from_labels_and_predictions_is_left_out_of_the_mean():
    s = confusion_summary(torch.tensor([[3, 0], [0, 0]]), ["a", "b"])
    assert math.isnan(s["IoU/b"].item()) and s["mIoU"].item() == 1.0


def test_matches_torchmetrics_own_update():
    from torchmetrics.classification import MulticlassJaccardIndex

    torch.manual_seed(0)
    preds, target = torch.randint(0, 4, (3, 17, 19)), torch.randint(0, 4, (3, 17, 19))
    target[:, :3] = 255
    ours, theirs = SegmentationIoU(4), MulticlassJaccardIndex(4, average="none", ignore_index=255)
    ours.update(preds, target)
    theirs.update(preds, target)
    torch.testing.assert_close(ours.compute(), theirs.compute())


def test_labels_outside_the_class_range_raise():
    with pytest.raises(ValueError, match=r"label values must be in \[0, 3\) or 255"):
        SegmentationIoU(3).update(torch.tensor([0, 1]), torch.tensor([0, 7]))


def test_miou_equals_mmsegs_iou_metric_on_the_same_predictions():
    """mmseg's ``IoUMetric``: dataset-level intersections/unions per class, mean over the classes with a defined IoU
    (never labelled nor predicted -> NaN, left out); images of different sizes, ignored pixels, an absent class."""
    from mmseg.evaluation import IoUMetric

    from mmseg_reference import import_mmseg

    import_mmseg()
    classes = [f"c{i}" for i in range(6)]
    reference = IoUMetric(iou_metrics=["mIoU"])
    reference.dataset_meta = {"classes": classes}
    ours = SegmentationIoU(6)
    generator = torch.Generator().manual_seed(0)
    for height, width in [(17, 23), (31, 12), (8, 40)]:
        label = torch.randint(0, 5, (height, width), generator=generator)  # class 5 never labelled ...
        label[torch.rand(height, width, generator=generator) < 0.2] = 255
        prediction = torch.where(torch.rand(height, width, generator=generator) < 0.6, label, 1).clamp(max=4)
        prediction[0, 0] = 4  # ... nor predicted: NaN; class 4 is predicted where 255 too
        reference.process([], [{"pred_sem_seg": {"data": prediction[None]}, "gt_sem_seg": {"data": label[None]}}])
        ours.update(prediction[None], label[None])
    totals = [sum(r[i] for r in reference.results) for i in range(4)]  # intersect, union, pred, label areas
    per_class = torch.as_tensor(IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])["IoU"], dtype=torch.float64)
    summary = confusion_summary(ours.confmat, classes)
    torch.testing.assert_close(torch.stack([summary[f"IoU/{c}"] for c in classes]), per_class, equal_nan=True)
    assert math.isnan(summary["IoU/c5"])
    assert summary["mIoU"].item() == pytest.approx(per_class[:5].mean().item(), rel=1e-6)  # mmseg counts in float32
    assert reference.compute_metrics(reference.results)["mIoU"] == pytest.approx(
        100 * summary["mIoU"].item(), abs=0.005
    )


def test_a_class_seen_on_one_pixel_counts_and_one_labelled_pixel_is_the_whole_accuracy():
    s = confusion_summary(torch.tensor([[1, 0], [0, 0]]), ["a", "b"])  # one pixel, labelled and predicted a
    assert s["IoU/a"].item() == 1.0 and s["pixel_acc"].item() == 1.0 and s["mIoU"].item() == 1.0


def test_class_names_must_match_the_confusion_matrix():
    with pytest.raises(ValueError):
        confusion_summary(torch.eye(3), ["a", "b"])


def test_compute_gives_nan_for_a_class_absent_from_labels_and_predictions():
    metric = SegmentationIoU(3)
    metric.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    iou = metric.compute()
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2].item())


def test_the_label_equal_to_the_number_of_classes_is_out_of_range():
    SegmentationIoU(3).update(torch.tensor([0, 2]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"label values must be in \[0, 3\)"):
        SegmentationIoU(3).update(torch.tensor([0, 1]), torch.tensor([0, 3]))
