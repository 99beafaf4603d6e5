"""validate, test, predict, analyze and export never touch a training run's files (``--ckpt_path last`` included);
the evaluations' outputs go to a new folder beside the checkpoint, printed at the end; the run's config.yaml still
resumes it afterwards."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from tests.datasets import write_image_folder
from tests.test_reliability.runs import dnlseg, run_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(finished_run, tmp_path_factory):
    """The run's files before, and the results of each evaluation command run on it, in the README's order."""
    directory, run = finished_run
    before = run_files(run)
    images = tmp_path_factory.mktemp("images")
    sizes = write_image_folder(images)
    config, last = str(run / "config.yaml"), str(run / "checkpoints" / "last.ckpt")
    results = {
        # an override of the data and one of the model: neither may reach the run's config.yaml
        "validate": dnlseg(
            "validate", "-c", config, "--ckpt_path", last, "--data.init_args.difficulty=1.0",
            "--model.inference.flip=true",
        ),
        "test": dnlseg("test", "-c", config, "--ckpt_path", "last"),
        "predict": dnlseg("predict", "-c", config, "--ckpt_path", last, f"--data.init_args.predict_dir={images}"),
        "analyze": dnlseg("analyze", "-c", config, "--ckpt_path", last, "--num_images", "1", "--limit_batches", "1"),
        "export": dnlseg("export", "-c", config, "--ckpt_path", "last", "--output", str(images.parent / "run.onnx")),
    }  # fmt: skip
    after = run_files(run)
    results["resume"] = dnlseg("fit", "-c", config, "--ckpt_path", "last")
    return run, (before, after), results, sizes


def test_no_evaluation_changes_the_run_and_its_config_still_resumes(evaluated):
    run, (before, after), results, _ = evaluated
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
    assert after == before  # config.yaml, checkpoints and events, byte for byte
    assert "run.onnx (onnx" in results["export"].stderr  # `last`: the run's last.ckpt, as validate reads it
    # the fit that continues the run (the one command allowed to write into it) reads its config as it was
    assert "the run was already complete at step 4 (max_steps=4): nothing trained" in results["resume"].stderr
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["init_args"]["difficulty"] == 0.5 and saved["model"]["inference"] is None
    assert "verbose" not in saved


def test_each_evaluation_writes_its_own_folder_beside_the_checkpoint_and_prints_it(evaluated):
    run, _, results, _ = evaluated
    for name in ("validate", "test", "predict", "analyze"):
        (folder,) = (run / "eval" / "last").glob(f"{name}-*")
        assert folder.name == f"{name}-0"
        assert str(folder) in results[name].stderr, results[name].stderr[-2000:]
    validate = run / "eval" / "last" / "validate-0"
    record = json.loads((validate / "metrics.json").read_text())
    assert record["ckpt_path"].endswith("version_0/checkpoints/last.ckpt") and record["step"] == 4
    assert 0 <= record["metrics"]["val/mIoU"] <= 1
    # validate's own resolved config holds its overrides (the command line wins over the checkpoint's options)
    own = yaml.safe_load((validate / "config.yaml").read_text())
    assert own["data"]["init_args"]["difficulty"] == 1.0 and own["model"]["inference"]["flip"] is True
    assert "test/mIoU" in json.loads((run / "eval" / "last" / "test-0" / "metrics.json").read_text())["metrics"]
    analysis = json.loads((run / "eval" / "last" / "analyze-0" / "metrics.json").read_text())
    assert analysis["figures"] == ["step000004_dnl_decode_head.context_image0.png"]


def test_predict_writes_label_colour_and_overlay_pngs_at_each_images_size(evaluated):
    run, _, results, sizes = evaluated
    out = run / "eval" / "last" / "predict-0" / "predictions"
    for name, (h, w) in sizes.items():
        labels = Image.open(out / "labels" / f"{name}.png")
        assert labels.mode == "L" and labels.size == (w, h)
        for kind in ("color", "overlay"):
            image = Image.open(out / kind / f"{name}.png")
            assert image.mode == "RGB" and image.size == (w, h)
    assert f"wrote {len(sizes)} predictions" in results["predict"].stderr


def test_evaluating_without_a_checkpoint_warns_that_the_weights_are_untrained(finished_run):
    directory, run = finished_run
    # the run's config.yaml holds ckpt_path: last once the run was resumed: null drops it
    result = dnlseg("validate", "-c", str(run / "config.yaml"), "--ckpt_path=null", "--trainer.limit_val_batches=1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validate without --ckpt_path: the model keeps its initial, untrained weights" in result.stderr
    assert (directory / "runs" / "dnl" / "eval" / "untrained" / "validate-0" / "metrics.json").is_file()
