"""``dnlseg predict --data.init_args.predict_dir=DIR`` with every shipped DataModule: no dataset root needed; per
image a label PNG in the dataset's encoding at the image's size, a colour PNG and an overlay, in a printed folder."""

import json

import numpy as np
import pytest
from PIL import Image

from dnlseg.data.cityscapes import TRAIN_ID_TO_LABEL_ID
from tests.datasets import OWN_CLASSES, write_image_folder
from tests.recipes import SMALL_ON_ONE_CPU
from tests.test_reliability.runs import ROOT, dnlseg

pytestmark = pytest.mark.slow

ON_CPU = SMALL_ON_ONE_CPU
DATASETS = {
    # config: (extra arguments, label values the dataset's encoding allows, the label PNGs' mode)
    "cityscapes/dnl_r50_d8_512x1024_80k": ([], set(TRAIN_ID_TO_LABEL_ID[:19].tolist()), "L"),  # labelIds
    "ade20k/dnl_r50_d8_512x512_160k": (["--model.inference.base_size=null"], set(range(1, 151)), "L"),
    "own_data/dnl_r50_d8_512x512_40k": ([f"--data.init_args.classes={json.dumps(OWN_CLASSES)}"], {0, 1, 2, 3, 7}, "L"),
    "voc/dnl_r50_d8_512x512_20k": (["--model.inference.base_size=null"], set(range(21)), "P"),  # VOC's palette PNGs
}


@pytest.mark.parametrize("config", DATASETS, ids=list(DATASETS))
def test_predict_on_a_folder_needs_no_dataset_root_and_writes_each_image_at_its_size(config, tmp_path, monkeypatch):
    monkeypatch.delenv("CITYSCAPES_ROOT", raising=False)
    monkeypatch.delenv("ADE20K_ROOT", raising=False)
    monkeypatch.delenv("VOC_ROOT", raising=False)
    sizes = write_image_folder(tmp_path / "images")
    extra, values, mode = DATASETS[config]
    out = tmp_path / "out"
    args = ["-c", str(ROOT / f"configs/{config}.yaml"), *ON_CPU, *extra, f"--output_dir={out}"]
    result = dnlseg("predict", *args, f"--data.init_args.predict_dir={tmp_path / 'images'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"predictions written to {out / 'predictions'}" in result.stderr
    for name, (h, w) in sizes.items():
        labels = Image.open(out / "predictions" / "labels" / f"{name}.png")
        assert labels.mode == mode and labels.size == (w, h)
        assert set(np.unique(np.asarray(labels)).tolist()) <= values  # the dataset's own encoding
        for kind in ("color", "overlay"):
            assert Image.open(out / "predictions" / kind / f"{name}.png").size == (w, h)
    assert (out / "config.yaml").is_file()  # predict's own resolved config, beside its outputs
