"""Every shipped config is set up to be resumed and evaluated without damage: run folder chosen on disk, periodic
last.ckpt, checkpoint records reconciled with the disk on resume, atomic writes, SIGTERM save, predictions to files."""

import pytest

from tests.recipes import RECIPES, recipe_id, resolved

CHECKPOINT = "dnlseg.callbacks.ResumableModelCheckpoint"


@pytest.mark.parametrize("config", RECIPES, ids=recipe_id)
def test_shipped_config_resumes_from_a_stable_last_checkpoint(config):
    trainer = resolved(config)["trainer"]  # as --print_config shows it: every default filled in
    # no fixed version: dnlseg.cli.run_dirs gives a new run the next folder and --ckpt_path last the latest one
    assert trainer["logger"]["init_args"].get("version") is None
    assert trainer.get("deterministic") is True or config.parent.name != "synthetic"  # bitwise resume on CPU
    assert [p["class_path"] for p in trainer["plugins"]] == ["dnlseg.checkpoints.checkpoint_io.AtomicCheckpointIO"]
    classes = [c["class_path"] for c in trainer["callbacks"]]
    # Lightning's own ModelCheckpoint would resume with a stale record: last-v1.ckpt, a deleted best path
    assert classes[:2] == [CHECKPOINT, CHECKPOINT] and "lightning.pytorch.callbacks.ModelCheckpoint" not in classes
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args", {}) for c in trainer["callbacks"][1:]}
    last = trainer["callbacks"][0]["init_args"]
    assert last["save_last"] is True and last["save_top_k"] == 0
    assert last["every_n_train_steps"] == (50 if config.parent.name == "synthetic" else 1000)
    assert {"CheckpointOnSigterm", "StepSeed", "FitSummary", "PredictionWriter"} <= callbacks.keys()
    best = callbacks["ResumableModelCheckpoint"]
    assert best["monitor"] == "val/mIoU" and best["save_last"] is None
    assert callbacks["PredictionWriter"]["output_dir"] is None  # writes into the command's output folder (--output_dir)
