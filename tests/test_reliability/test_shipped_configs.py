"""Every shipped config is set up to be resumed and evaluated without damage: run folder chosen on disk, periodic
last.ckpt, checkpoint records reconciled with the disk on resume, atomic writes, SIGTERM save, predictions to files."""

import pytest
import yaml

from tests.test_reliability.runs import ROOT

CONFIGS = sorted(ROOT.glob("configs/*/*.yaml"))
CHECKPOINT = "dnlseg.callbacks.ResumableModelCheckpoint"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_config_resumes_from_a_stable_last_checkpoint(config):
    trainer = yaml.safe_load(config.read_text())["trainer"]
    # no fixed version: dnlseg.run_dirs gives a new run the next folder and --ckpt_path last the latest one
    assert trainer["logger"]["init_args"].get("version") is None
    assert trainer.get("deterministic") is True or config.parent.name != "synthetic"  # bitwise resume on CPU
    assert [p["class_path"] for p in trainer["plugins"]] == ["dnlseg.checkpoint_io.AtomicCheckpointIO"]
    classes = [c["class_path"] for c in trainer["callbacks"]]
    # Lightning's own ModelCheckpoint would resume with a stale record: last-v1.ckpt, a deleted best path
    assert classes[:2] == [CHECKPOINT, CHECKPOINT] and "lightning.pytorch.callbacks.ModelCheckpoint" not in classes
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args", {}) for c in trainer["callbacks"][1:]}
    last = trainer["callbacks"][0]["init_args"]
    assert last["save_last"] is True and last["save_top_k"] == 0
    assert last["every_n_train_steps"] == (50 if config.parent.name == "synthetic" else 1000)
    assert {"CheckpointOnSigterm", "StepSeed", "FitSummary", "PredictionWriter"} <= callbacks.keys()
    best = callbacks["ResumableModelCheckpoint"]
    assert best["monitor"] == "val/mIoU" and "save_last" not in best
    assert callbacks["PredictionWriter"] == {}  # writes into the command's output folder (--output_dir)
