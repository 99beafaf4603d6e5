"""Run folders (a new fit takes the next free version, ``--ckpt_path last`` the latest one with a last.ckpt; each
claimed by one process; a failed fit leaves an existing one as it was) and evaluation folders (beside the checkpoint,
never inside the run's own files)."""

import json

import pytest
from jsonargparse import Namespace

from dnlseg.cli import run_dirs
from dnlseg.cli.run_dirs import (
    FOLDER_ENV,
    choose_version,
    claim_run_folder,
    evaluation_dir,
    remove_unfinished,
    resolve_logger_version,
    restore,
    snapshot,
    write_metrics,
)
from dnlseg.errors import ConfigError


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


@pytest.fixture
def launching(monkeypatch):
    """This process as the one the user started (not a DDP worker), whatever the test runner's environment."""
    for name in ("LOCAL_RANK", "RANK", "SLURM_PROCID", FOLDER_ENV):
        monkeypatch.delenv(name, raising=False)


def test_a_new_run_claims_a_folder_no_other_process_created(tmp_path, launching, monkeypatch):
    first = claim_run_folder(fit_config(tmp_path))
    assert first.path == tmp_path / "dnl" / "version_0" and first.path.is_dir()
    assert first.created == tmp_path / "dnl"  # the outermost folder it made: removed if the fit fails
    # Another fit chose version_0 too (it looked before this one created it): the mkdir fails, it takes the next.
    monkeypatch.setattr(run_dirs, "choose_version", lambda run_root, resume_last: 0)
    config = fit_config(tmp_path)
    second = claim_run_folder(config)
    assert second.path == tmp_path / "dnl" / "version_1" and second.created == second.path
    assert config.trainer.logger.init_args.version == 1  # the logger writes where the claim is
    first.release()
    second.release()


def test_a_run_is_locked_while_a_fit_writes_it(tmp_path, launching):
    make_run(tmp_path / "dnl", 0)
    first = claim_run_folder(fit_config(tmp_path, ckpt_path="last"))
    assert first.path == tmp_path / "dnl" / "version_0" and first.created is None and first.lock is not None
    with pytest.raises(ConfigError, match=r"version_0 is being written by another dnlseg fit .*; wait for that fit"):
        claim_run_folder(fit_config(tmp_path, ckpt_path="last"))  # flock: another open() conflicts, as a process
    first.release()
    again = claim_run_folder(fit_config(tmp_path, ckpt_path="last"))  # released: the next resume may write it
    assert again.path == first.path
    again.release()


def test_a_ddp_worker_takes_the_folder_it_is_given_and_claims_nothing(tmp_path, launching, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(FOLDER_ENV, str(tmp_path / "dnl" / "version_3"))
    worker = claim_run_folder(fit_config(tmp_path))
    assert worker.path == tmp_path / "dnl" / "version_3" and worker.lock is None and worker.created is None
    assert not (tmp_path / "dnl").exists()  # rank zero creates it
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("RANK", "2")  # torchrun's worker: no folder inherited, nothing created
    assert claim_run_folder(fit_config(tmp_path)).lock is None and not (tmp_path / "dnl").exists()


def test_restore_puts_a_run_folder_back_as_it_was(tmp_path):
    run = tmp_path / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("reduction: 2\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    events = run / "events.out.tfevents.1.host.1.0"
    events.write_bytes(b"e" * (run_dirs.SMALL_FILE + 10))  # too large to be kept: restored by its size
    before = snapshot(run)
    hashes = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    (run / "config.yaml").write_text("reduction: 4\n")  # what a refused resume wrote
    (run / "hparams.yaml").write_text("x")
    (run / "events.out.tfevents.2.host.2.0").write_bytes(b"")
    (run / "lightning_logs").mkdir()
    with events.open("ab") as f:
        f.write(b"appended")
    (run / "eval" / "validate-0").mkdir(parents=True)  # an evaluation's folder is not the fit's to touch
    (run / "eval" / "validate-0" / "metrics.json").write_text("{}")
    restore(run, before)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "eval" not in p.parts} == hashes
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "eval", events.name]
    assert (run / "eval" / "validate-0" / "metrics.json").is_file()


def test_metrics_json_holds_null_for_nan_and_the_markdown_table(tmp_path):
    record = {"subcommand": "validate", "ckpt_path": "x.ckpt", "step": 3, "config": ["c.yaml"]}
    path = write_metrics(tmp_path, record | {"metrics": {"val/mIoU": 0.5, "val/IoU/rider": float("nan")}})
    assert json.loads(path.read_text())["metrics"] == {"val/IoU/rider": None, "val/mIoU": 0.5}
    assert "| val/mIoU | 0.5000 |" in (tmp_path / "metrics.md").read_text()
