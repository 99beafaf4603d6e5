"""Run folders (a new fit takes the next free version, ``--ckpt_path last`` the latest one with a last.ckpt) and
evaluation folders (beside the checkpoint, never inside the run's own files)."""

import json

import pytest
from jsonargparse import Namespace

from dnlseg.preflight import ConfigError
from dnlseg.run_dirs import (
    choose_version,
    evaluation_dir,
    remove_unfinished,
    resolve_logger_version,
    write_metrics,
)


def make_run(root, version, last=True):
    checkpoints = root / f"version_{version}" / "checkpoints"
    checkpoints.mkdir(parents=True)
    if last:
        (checkpoints / "last.ckpt").write_bytes(b"x")


def fit_config(save_dir, ckpt_path=None, version=None):
    logger = Namespace(
        class_path="lightning.pytorch.loggers.TensorBoardLogger",
        init_args=Namespace(save_dir=str(save_dir), name="dnl", version=version),
    )
    return Namespace(trainer=Namespace(logger=logger), ckpt_path=ckpt_path)


def test_new_runs_never_reuse_a_folder(tmp_path):
    assert choose_version(tmp_path / "dnl", resume_last=False) == 0
    make_run(tmp_path / "dnl", 0)
    make_run(tmp_path / "dnl", 3, last=False)
    (tmp_path / "dnl" / "version_x").mkdir()
    assert choose_version(tmp_path / "dnl", resume_last=False) == 4


def test_last_resumes_the_latest_folder_that_has_a_last_checkpoint(tmp_path):
    make_run(tmp_path / "dnl", 0)
    make_run(tmp_path / "dnl", 1)
    make_run(tmp_path / "dnl", 2, last=False)  # started, killed before its first checkpoint
    assert choose_version(tmp_path / "dnl", resume_last=True) == 1


def test_last_without_any_checkpoint_starts_a_new_run(tmp_path, caplog):
    make_run(tmp_path / "dnl", 0, last=False)
    assert choose_version(tmp_path / "dnl", resume_last=True) == 1
    assert "no checkpoints/last.ckpt" in caplog.text


def test_the_parsed_config_gets_the_version_unless_one_is_given(tmp_path):
    make_run(tmp_path / "dnl", 0)
    config = fit_config(tmp_path)
    resolve_logger_version(config)
    assert config.trainer.logger.init_args.version == 1
    config = fit_config(tmp_path, ckpt_path="last")
    resolve_logger_version(config)
    assert config.trainer.logger.init_args.version == 0
    config = fit_config(tmp_path, version=7)
    resolve_logger_version(config)
    assert config.trainer.logger.init_args.version == 7


def test_a_fit_into_a_folder_with_checkpoints_must_continue_that_run(tmp_path):
    make_run(tmp_path / "dnl", 0)
    with pytest.raises(ConfigError, match=r"version_0 already holds a run .* --ckpt_path last"):
        resolve_logger_version(fit_config(tmp_path, version=0))  # e.g. fit -c <run>/config.yaml, no --ckpt_path
    own = tmp_path / "dnl" / "version_0" / "checkpoints" / "last.ckpt"
    for ckpt_path in ("last", str(own)):
        config = fit_config(tmp_path, ckpt_path=ckpt_path, version=0)
        assert resolve_logger_version(config) == tmp_path / "dnl" / "version_0"


def test_evaluations_get_a_new_folder_beside_their_checkpoint(tmp_path):
    run = tmp_path / "runs" / "dnl" / "version_0"
    ckpt = run / "checkpoints" / "step8-miou0.5.ckpt"
    assert evaluation_dir("validate", str(ckpt), None, tmp_path) == run / "eval" / "step8-miou0.5" / "validate-0"
    (run / "eval" / "step8-miou0.5" / "validate-0").mkdir(parents=True)
    assert evaluation_dir("validate", str(ckpt), None, tmp_path).name == "validate-1"
    assert evaluation_dir("predict", str(ckpt), None, tmp_path).name == "predict-0"
    # a checkpoint outside a run folder, e.g. a model-zoo file in ~/Downloads
    zoo = tmp_path / "Downloads" / "dnl_r50_cityscapes.pth"
    assert evaluation_dir("test", str(zoo), None, tmp_path) == zoo.parent / "eval" / "dnl_r50_cityscapes" / "test-0"
    assert (
        evaluation_dir("validate", None, None, tmp_path / "dnl")
        == tmp_path / "dnl" / "eval" / "untrained" / "validate-0"
    )
    assert evaluation_dir("validate", str(ckpt), str(tmp_path / "mine"), tmp_path) == tmp_path / "mine"


def test_a_failed_commands_folder_is_removed_only_when_it_holds_no_result(tmp_path):
    empty = tmp_path / "a"
    empty.mkdir()
    (empty / "config.yaml").write_text("x")
    (empty / "events.out.tfevents.1.host.1.0").write_text("x")
    assert remove_unfinished(empty) and not empty.exists()
    kept = tmp_path / "b" / "predictions" / "labels"
    kept.mkdir(parents=True)
    (kept / "img.png").write_bytes(b"x")
    assert not remove_unfinished(tmp_path / "b") and kept.exists()


def test_metrics_json_holds_null_for_nan_and_the_markdown_table(tmp_path):
    record = {"subcommand": "validate", "ckpt_path": "x.ckpt", "step": 3, "config": ["c.yaml"]}
    path = write_metrics(tmp_path, record | {"metrics": {"val/mIoU": 0.5, "val/IoU/rider": float("nan")}})
    assert json.loads(path.read_text())["metrics"] == {"val/IoU/rider": None, "val/mIoU": 0.5}
    assert "| val/mIoU | 0.5000 |" in (tmp_path / "metrics.md").read_text()
