"""``dnlseg predict -c configs/cityscapes/dnl_r50_d8_512x1024_80k.yaml --ckpt_path <mmseg DNL R50-D8 .pth>`` on a
Cityscapes-layout folder writes mmseg's own predictions: those of mmseg's ``init_model`` + ``inference_model``
(its test pipeline, data preprocessor and model) with the same checkpoint, on the same PNG files; so do the recipes
of a head of the other families: one of its own layout (DANet) and a cascade (OCR)."""

import numpy as np
import pytest
from PIL import Image

from dnlseg.cli.lightning_cli import run_cli
from dnlseg.data.cityscapes import CLASS_NAMES, TRAIN_ID_TO_LABEL_ID
from tests.mmseg_helpers import mirrored_config, mmseg_model, save_mmseg_checkpoint
from tests.recipes import recipe, recipe_cpu_args

# recipe: seed of the random mmseg model (OCR: with seeds 0, 1 and 3 it predicts one class on a fixture image)
RECIPES = {
    "dnl_r50_d8_512x1024_80k": 0,
    "danet_r50_d8_512x1024_80k": 0,
    "ocrnet_r101_d8_512x1024_80k": 2,
}


def mmseg_predictions(recipe_file, checkpoint, images: list, size: tuple[int, int]) -> list:
    """(train ids, logits) from mmseg's own inference API; its test ``Resize(scale=(2048, 1024))`` is set to the
    fixture's (width, height), which leaves these images as they are, as the real one leaves 2048x1024 images."""
    from mmseg.apis import inference_model, init_model

    from mmseg_reference import import_mmseg, load_config

    import_mmseg()
    config = load_config(mirrored_config(recipe_file))
    for step in config.test_pipeline:
        if step["type"] == "Resize":
            step["scale"] = size
    model = init_model(config, str(checkpoint), device="cpu")
    results = [inference_model(model, str(image)) for image in images]
    return [(r.pred_sem_seg.data[0].numpy(), r.seg_logits.data.numpy()) for r in results]


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_predict_with_an_mmseg_checkpoint_writes_mmsegs_predictions(name, cityscapes_root, tmp_path):
    recipe_file = recipe(f"cityscapes/{name}")
    reference = mmseg_model(recipe_file, seed=RECIPES[name])
    checkpoint = save_mmseg_checkpoint(reference, tmp_path / "zoo.pth", list(CLASS_NAMES))
    out = tmp_path / "out"
    run_cli(
        [
            "predict",
            *recipe_cpu_args(recipe_file, cityscapes_root, tmp_path),
            "--ckpt_path",
            str(checkpoint),
            f"--trainer.callbacks.init_args.output_dir={out}",
        ]
    )
    images = sorted((cityscapes_root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    assert images
    width, height = Image.open(images[0]).size
    expected = mmseg_predictions(recipe_file, checkpoint, images, (width, height))
    for image, (train_ids, logits) in zip(images, expected, strict=True):
        name = image.name.removesuffix("_leftImg8bit.png")
        written = np.asarray(Image.open(next((out / "labels").rglob(f"{name}*.png"))))
        assert written.shape == train_ids.shape == (height, width)
        assert len(np.unique(train_ids)) > 1  # random weights, but not a constant map
        # Equal, except where mmseg's two best classes tie to within float rounding (fused vs materialised
        # attention differ by ~1e-6 relative in the logits): there either answer is mmseg's up to rounding.
        top2 = np.sort(logits, axis=0)[-2:]
        tie = (top2[1] - top2[0]) <= 1e-4 * np.abs(logits).max()
        differ = written != TRAIN_ID_TO_LABEL_ID[train_ids]
        assert not (differ & ~tie).any(), f"{name}: {int((differ & ~tie).sum())} pixels differ outside ties"
        assert differ.mean() < 1e-3
