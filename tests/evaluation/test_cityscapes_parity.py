"""Our dataset-level mIoU equals the official cityscapesscripts evaluator on the label PNGs we export.

``evalPixelLevelSemanticLabeling`` averages the IoU of the 19 evaluated classes, leaving out classes with no
ground truth and no prediction (NaN), and counts false positives only on pixels whose ground truth is an
evaluated class. ``confusion_summary`` does the same on the train-id confusion matrix: ignored ground truth
(255) has no row, and a class with an empty union is NaN and left out of the mean.
"""

import os

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from dnlseg.callbacks import PredictionWriter
from dnlseg.cli.lightning_cli import run_cli
from dnlseg.data import CityscapesDataModule, LoaderOptions
from dnlseg.data.cityscapes import LABEL_ID_TABLE
from dnlseg.evaluation import SegmentationIoU, confusion_summary
from tests.recipes import recipe, recipe_cpu_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def official_evaluation(cityscapes_root, prediction_dir) -> dict:
    """Run cityscapesscripts' pixel-level evaluation as its main() does: gtFine/val labelIds vs our PNGs."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.args
    args.cityscapesPath = str(cityscapes_root)
    args.groundTruthSearch = os.path.join(str(cityscapes_root), "gtFine", "val", "*", "*_gtFine_labelIds.png")
    args.predictionPath = str(prediction_dir)
    args.predictionWalk = None
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    args.colorized = False
    ground_truth = sorted(ev.glob.glob(args.groundTruthSearch))
    assert ground_truth, args.groundTruthSearch
    predictions = [ev.getPrediction(args, gt) for gt in ground_truth]
    return ev.evaluateImgLists(predictions, ground_truth, args)


def test_our_metric_equals_the_evaluator_on_noisy_predictions(cityscapes_root, tmp_path):
    """Known predictions: ground truth with 30% of the pixels (ignored ones included) set to random classes."""
    dm = CityscapesDataModule(str(cityscapes_root), loader=LoaderOptions(num_workers=0))
    dm.setup("validate")
    metric = SegmentationIoU(19)
    out = tmp_path / "labels"
    out.mkdir()
    rng = np.random.default_rng(0)
    for pair in dm.datasets["val"].pairs:
        gt_label_ids = np.asarray(Image.open(str(pair.label).replace("labelTrainIds", "labelIds")))
        target = LABEL_ID_TABLE[gt_label_ids].astype(np.int64)  # train ids, 255 ignored
        pred = np.where(target == 255, 0, target)
        noise = rng.random(pred.shape) < 0.3
        pred[noise] = rng.choice([0, 1, 6, 8, 11, 13], size=int(noise.sum()))  # 1 sidewalk: never in the labels
        metric.update(torch.from_numpy(pred), torch.from_numpy(target))
        Image.fromarray(dm.encode_prediction(pred)).save(out / f"{pair.name}.png")
    ours = confusion_summary(metric.confmat, dm.class_names)
    official = official_evaluation(cityscapes_root, out)
    for name in dm.class_names:
        a, b = ours[f"IoU/{name}"].item(), official["classScores"][name]
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-9), name
    assert ours["IoU/sidewalk"].item() == 0.0 and np.isnan(ours["IoU/rider"].item())
    assert ours["mIoU"].item() == pytest.approx(official["averageScoreClasses"], abs=1e-9)


def tiny_overrides(cityscapes_root, save_dir):
    return [
        *recipe_cpu_args(recipe("cityscapes/dnl_r50_d8_512x1024_80k"), cityscapes_root, save_dir),
        "--model.network.encoder.name=resnet18",
        "--model.network.head_channels=16",
        "--model.network.aux_channels=8",
    ]


@pytest.mark.slow
def test_dnlseg_validate_miou_equals_the_evaluator_on_dnlseg_predict_pngs(cityscapes_root, tmp_path):
    L.seed_everything(0)
    validate = run_cli(["validate", *tiny_overrides(cityscapes_root, tmp_path / "runs")])
    ours = validate.trainer.callback_metrics["val/mIoU"].item()
    checkpoint = tmp_path / "model.ckpt"
    validate.trainer.save_checkpoint(checkpoint)

    predict = run_cli(
        [
            "predict",
            *tiny_overrides(cityscapes_root, tmp_path / "runs"),
            f"--ckpt_path={checkpoint}",
            f"--output_dir={tmp_path / 'predict'}",  # everything predict writes; PNGs under predictions/
        ]
    )
    out = tmp_path / "predict" / "predictions"
    assert any(isinstance(cb, PredictionWriter) and cb.written == 2 for cb in predict.trainer.callbacks)
    assert predict.trainer.predict_loop.return_predictions is False  # the maps went to files, not into memory
    label_values = set(np.unique(np.asarray(Image.open(next((out / "labels").glob("*.png"))))).tolist())
    assert label_values <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
    assert len(list((out / "color").glob("*.png"))) == 2

    official = official_evaluation(cityscapes_root, out / "labels")
    assert 0 < ours < 1
    assert ours == pytest.approx(official["averageScoreClasses"], abs=1e-4)
