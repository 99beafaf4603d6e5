"""Every shipped config is set up to be resumed: run folder chosen on disk, periodic last.ckpt, atomic writes,
SIGTERM save."""

import pytest
import yaml

from tests.test_reliability.runs import ROOT

CONFIGS = sorted(ROOT.glob("configs/*/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_config_resumes_from_a_stable_last_checkpoint(config):
    trainer = yaml.safe_load(config.read_text())["trainer"]
    # no fixed version: dnlseg.run_dirs gives a new run the next folder and --ckpt_path last the latest one
    assert trainer["logger"]["init_args"].get("version") is None
    assert trainer.get("deterministic") is True or config.parent.name != "synthetic"  # bitwise resume on CPU
    assert [p["class_path"] for p in trainer["plugins"]] == ["dnlseg.checkpoint_io.AtomicCheckpointIO"]
    callbacks = {c["class_path"].rsplit(".", 1)[1]: c.get("init_args", {}) for c in trainer["callbacks"][1:]}
    last = trainer["callbacks"][0]["init_args"]
    assert last["save_last"] is True and last["save_top_k"] == 0
    assert last["every_n_train_steps"] == (50 if config.parent.name == "synthetic" else 1000)
    assert {"CheckpointOnSigterm", "StepSeed"} <= callbacks.keys()
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/mIoU" and "save_last" not in callbacks["ModelCheckpoint"]
