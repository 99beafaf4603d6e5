"""A new fit takes the next free version folder; ``--ckpt_path last`` resumes the latest one with a last.ckpt."""

from jsonargparse import Namespace

from dnlseg.run_dirs import choose_version, resolve_logger_version


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
